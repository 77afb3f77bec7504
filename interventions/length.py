"""The `length` axis: token-length buckets and the seeded context prepended to an item to bring its prompt into one.

An item's prompt becomes `context + SEPARATOR + prompt` (its corrupt prompt gets the same context): the item's own
tokens stay last and unchanged, so the target still follows the last token. The context is the tail of a seeded
stream of whole units, cut at a word boundary at its front: sentences of the neutral passages shipped in
interventions/data/neutral_passages.txt (public domain, sources named there), or, with `length_context: family`,
other solved items (`prompt + target`) of the same family's train part. Pure functions of (items, tokenizer, bucket,
seed): the same on every rerun.
"""
from __future__ import annotations

import random
import re
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from interventions.families import Item, Split, token_ids
from interventions.registry import AtlasError

BUCKETS: dict[str, tuple[int, int]] = {"short": (5, 30), "medium": (30, 150), "long": (150, 1000)}  # whole prompt
SOURCES = ("neutral", "family")
SEPARATOR = "\n"  # one token for BPE tokenizers; between the context and the item's prompt
PASSAGES = Path(__file__).parent / "data" / "neutral_passages.txt"


def bucket_label(value) -> str:
    """A `length` axis value as its label: a bucket name, or `{min: a, max: b}` (or "a-b") as "a-b"."""
    if isinstance(value, dict):
        if set(value) != {"min", "max"}:
            raise ValueError(f"a bucket is short, medium, long or {{min: a, max: b}}, not {value!r}")
        lo, hi = value["min"], value["max"]
        if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool) or isinstance(hi, bool):
            raise ValueError(f"bucket bounds must be integers, not {value!r}")
        value = f"{lo}-{hi}"
    if not isinstance(value, str):
        raise ValueError(f"a bucket is short, medium, long or {{min: a, max: b}}, not {value!r}")
    bucket(value)
    return value


def bucket(label: str) -> tuple[int, int]:
    """(min, max) tokens of the whole prompt for a bucket label."""
    if label in BUCKETS:
        return BUCKETS[label]
    match = re.fullmatch(r"(\d+)-(\d+)", label)
    if not match:
        raise ValueError(f"unknown bucket {label!r} (short, medium, long or {{min: a, max: b}})")
    lo, hi = int(match[1]), int(match[2])
    if not 1 <= lo <= hi:
        raise ValueError(f"bucket {label!r}: need 1 <= min <= max")
    return lo, hi


def split_key(family: str, length: str | None) -> str:
    """The name a (family, length) split is stored under: the family itself when the sweep has no length axis."""
    return family if length is None else f"{family}@{length}"


@lru_cache(maxsize=1)
def neutral_sentences() -> tuple[str, ...]:
    lines = [ln.strip() for ln in PASSAGES.read_text(encoding="utf-8").splitlines()]
    text = [ln for ln in lines if ln and not ln.startswith("#")]
    return tuple(s for ln in text for s in re.split(r"(?<=[.;])\s+", ln) if s)


def _units(source: str, item: Item, pool: tuple[Item, ...], rng: random.Random) -> tuple[list[str], str]:
    """The stream's units in order (cycled from a seeded start) and what joins them."""
    if source == "neutral":
        units = list(neutral_sentences())
        start = rng.randrange(len(units))
        return units[start:] + units[:start], " "
    solved = [f"{i.prompt}{i.target}" for i in pool if i.prompt != item.prompt]
    if not solved:
        raise AtlasError("axes.length: length_context family needs other train items of the family (n_train >= 2)")
    rng.shuffle(solved)
    return solved, "\n"


def _context(units: list[str], joiner: str, words: int) -> str:
    """The last `words` words of the cycled stream of units, ending at a unit boundary (empty for 0)."""
    if words == 0:
        return ""
    pieces: list[str] = []
    i = 0
    while len(pieces) < words:  # the stream read backwards from its last unit: the unit next to the item comes first
        unit = units[-1 - (i % len(units))]
        pieces = re.findall(r"\S+\s*", unit + joiner) + pieces
        i += 1
    return "".join(pieces[-words:]).rstrip() + SEPARATOR


def lengthen(item: Item, tokenizer, lo: int, hi: int, rng: random.Random, source: str = "neutral",
             pool: tuple[Item, ...] = ()) -> tuple[Item, int]:
    """`item` with seeded context prepended so that its prompt has a seeded token length in [lo, hi] (all special
    tokens counted), and that length. Zero added tokens when the drawn length is the prompt's own."""
    base = len(token_ids(tokenizer, item.prompt))
    if base > hi:
        raise AtlasError(f"axes.length: an item's prompt is {base} tokens, longer than the bucket's max {hi} "
                         f"({item.prompt[:40]!r}...)")
    target = rng.randint(max(lo, base), hi)
    if target == base:
        return item, base
    units, joiner = _units(source, item, pool, rng)
    own = token_ids(tokenizer, item.prompt, special=False)

    def size(words: int) -> int:
        return len(token_ids(tokenizer, _context(units, joiner, words) + item.prompt))

    low, high = 0, target  # every word is at least one token: `target` words reach the target
    while low < high:  # the most words whose prompt is at most `target` tokens
        mid = (low + high + 1) // 2
        low, high = (mid, high) if size(mid) <= target else (low, mid - 1)
    context = _context(units, joiner, low)
    if size(low) != target:  # the next word cut at a token boundary at its front, to land on the target exactly
        ids = token_ids(tokenizer, _context(units, joiner, low + 1), special=False)
        for drop in range(1, 9):
            cut = tokenizer.decode(ids[drop:])
            if len(token_ids(tokenizer, cut + item.prompt)) == target:
                context = cut
                break
    prompt = context + item.prompt
    ids = token_ids(tokenizer, prompt)
    if not lo <= len(ids) <= hi:
        raise AtlasError(f"axes.length: cannot bring a {base}-token prompt into {lo}..{hi} tokens "
                         f"(got {len(ids)})")
    if ids[len(ids) - len(own):] != own:
        raise AtlasError(f"axes.length: the context changes how the item's prompt tokenizes ({item.prompt[:40]!r})")
    corrupt = context + item.corrupt_prompt if item.corrupt_prompt else ""
    if corrupt and len(token_ids(tokenizer, corrupt)) != len(ids):
        raise AtlasError("axes.length: with the context, an item's corrupt prompt is no longer as long as its prompt")
    return replace(item, prompt=prompt, corrupt_prompt=corrupt), len(ids)


def lengthen_split(split: Split, tokenizer, label: str, source: str = "neutral",
                   max_tokens: int | None = None) -> tuple[Split, dict[str, list[int]]]:
    """Every item of `split` brought into bucket `label` (seeded by family, seed, bucket and the item's place), the
    split renamed to split_key(family, label), and the realised prompt lengths per part ({"train": [...], ...}).
    `max_tokens`: the model's context; one prompt position is kept free for `prompt + target`."""
    lo, hi = bucket(label)
    if max_tokens is not None:
        if lo > max_tokens - 1:
            raise AtlasError(f"axes.length: bucket {label!r} needs at least {lo} tokens, more than the model's "
                             f"context of {max_tokens} allows")
        hi = min(hi, max_tokens - 1)
    lengths: dict[str, list[int]] = {}
    parts = {}
    for part in ("train", "eval"):
        items, sizes = [], []
        for i, item in enumerate(getattr(split, part)):
            rng = random.Random(f"length:{split.family}:{split.seed}:{label}:{source}:{part}:{i}")
            new, n = lengthen(item, tokenizer, lo, hi, rng, source, split.train)
            items.append(new)
            sizes.append(n)
        parts[part], lengths[part] = tuple(items), sizes
    return Split(split_key(split.family, label), split.seed, parts["train"], parts["eval"]), lengths
