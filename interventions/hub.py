"""Hub ids: whether one can be fetched, decided in seconds (offline mode, the local hub cache, one short probe).

transformers' own download path retries a missing network for about a minute, printing a
warning per retry; a spec is validated before anything starts, so this check answers first.
"""
from __future__ import annotations

import difflib
import os
import re
import threading
import urllib.error
import urllib.request

from interventions.registry import AtlasError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # `gpt2` or `org/name`
DEFAULT_ENDPOINT = "https://huggingface.co"


def looks_like_hub_id(name: str, builtins: list[str]) -> bool:
    """A hub id rather than a misspelt built-in name (that one keeps its "did you mean")."""
    # cutoff 0.8: "tiny-lama" is a misspelt built-in, "gpt2" (0.62 to tiny-gpt2) is the hub's GPT-2
    return bool(HUB_ID.match(name)) and not difflib.get_close_matches(name, builtins, n=1, cutoff=0.8)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an id the cache helper rejects: not cached
        return False


def _probe(url: str, timeout: float) -> tuple[str, str] | None:
    """None if the hub has the model; ("missing", why) if the hub says it has not; ("unreachable", why) otherwise.

    Only an answer carrying the hub's own X-Error-Code header (RepoNotFound, GatedRepo, ...) counts
    as the hub's: a proxy or firewall in the way answers 403s and 404s of its own.
    """
    outcome: list[tuple[str, str] | None] = [("unreachable", f"no answer within {timeout:.0f} s")]
    request = urllib.request.Request(url, method="HEAD")
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")

    def ask() -> None:
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
            outcome[0] = None
        except urllib.error.HTTPError as exc:
            code = exc.headers.get("X-Error-Code") if exc.headers else None
            outcome[0] = ("missing", f"HTTP {exc.code} {code}") if code and exc.code < 500 else \
                ("unreachable", f"HTTP {exc.code} from something that is not the hub")
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            outcome[0] = ("unreachable", str(getattr(reason, "strerror", None) or reason))

    thread = threading.Thread(target=ask, daemon=True)  # a DNS lookup ignores urlopen's timeout: bound it here
    thread.start()
    thread.join(timeout + 1)
    return outcome[0]


def check(name: str, builtins: list[str], timeout: float = 4.0) -> None:
    """Raise one AtlasError line within ~`timeout` seconds unless hub id `name` can be fetched (or is cached)."""
    if _cached(name):
        return
    way_out = (f"use a built-in model ({', '.join(builtins)}) or a local folder with config.json and *.safetensors "
               "(`python -m orchestrator models` lists them; docs/models.md)")
    if _offline():
        raise AtlasError(f"{name!r} is a hub id, HF_HUB_OFFLINE is set and it is not in the local hub cache; "
                         f"{way_out}")
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    found = _probe(f"{endpoint}/api/models/{name}", timeout)
    if found is None:
        return
    what, why = found
    if what == "missing":
        raise AtlasError(f"{name!r} is not a built-in model, a local folder or a model on the hub at {endpoint} "
                         f"({why}; a private or gated model needs HF_TOKEN); {way_out}")
    raise AtlasError(f"hub id {name!r}: the hub at {endpoint} cannot be reached ({why}); {way_out}")
