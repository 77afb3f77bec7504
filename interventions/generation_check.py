"""The `generation` kind: prompts with checkable constraints, decoded greedily or sampled; loops, repetition,
adherence and decode speed.

The prompt set is a `family` value: the built-in `generation_prompts` (data/generation_prompts.jsonl) or
a `*.jsonl` file of `{"id", "prompt", "constraints": [{"type", "value"}]}` lines (constraints.py). A
trial decodes the first `n_eval` prompts of the set (chat template when the tokenizer has one) with
its `decoding`, seeded by the trial's seed; `decode` sets the new-token budget and temperature.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from interventions.constraints import check, met
from interventions.context import TrialContext, seeded_generator
from interventions.decoding import DECODINGS, decode, eos_ids, prompt_batch
from interventions.families import Item, Split, family_name, is_jsonl
from interventions.generation import distinct_n, looping, repetition, until_eos
from interventions.kinds import CommonAxes, Option, TrialResult, axis, kind, registered
from interventions.registry import AtlasError

PROMPT_SET = "generation_prompts"  # the built-in prompt set
WARMUP_TOKENS = 2  # an untimed decode of the same batch first (allocations, kernels, caches)


@dataclass(frozen=True)
class PromptItem(Item):
    """An item of a prompt set: no target; its id and constraints (JSON text, so that the item hashes)."""

    id: str = ""
    constraints: str = "[]"


def _parse(text: str, where: str) -> tuple[PromptItem, ...]:
    out, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if set(row) - {"id", "prompt", "constraints"} or not isinstance(row.get("prompt"), str):
                raise AtlasError("keys are id, prompt (a string) and constraints")
            for c in row.get("constraints", []):
                check(c)
        except (ValueError, AttributeError, TypeError) as exc:
            raise AtlasError(f"{where} line {n}: {exc}") from None
        ident = str(row.get("id", n))
        if ident in seen:
            raise AtlasError(f"{where} line {n}: id {ident!r} is used twice")
        seen.add(ident)
        out.append(PromptItem(row["prompt"], "", "", "", id=ident,
                              constraints=json.dumps(row.get("constraints", []), sort_keys=True)))
    return tuple(out)


@lru_cache(maxsize=1)
def builtin_prompts() -> tuple[PromptItem, ...]:
    text = resources.files("interventions").joinpath(f"data/{PROMPT_SET}.jsonl").read_text(encoding="utf-8")
    return _parse(text, f"{PROMPT_SET}.jsonl")


def prompt_split(value: str, seed: int, tokenizer, n_train: int, n_eval: int, base_dir: Path) -> Split:
    """The first n_eval prompts of a prompt set (the same for every seed: the seed drives sampling only)."""
    if is_jsonl(value):
        path = base_dir / value
        if not path.is_file():
            raise AtlasError(f"{value}: no such prompt file")
        prompts = _parse(path.read_text(encoding="utf-8"), path.name)
    else:
        prompts = builtin_prompts()
    if len(prompts) < n_eval:
        raise AtlasError(f"{value}: needs n_eval = {n_eval} prompts, has {len(prompts)}")
    return Split(family_name(value), seed, (), prompts[:n_eval])


def _prompt_set(value: str) -> str:
    if value != PROMPT_SET and not is_jsonl(value):
        raise ValueError(f"a prompt set: {PROMPT_SET} or a *.jsonl file of prompts, not {value!r}")
    return value


class GenerationAxes(CommonAxes):
    family: axis(Annotated[str, AfterValidator(_prompt_set)]) = [PROMPT_SET]  # the prompt set(s)
    decoding: axis(Annotated[str, registered(DECODINGS)])


class Decode(Option):
    """How the generation kind decodes: new-token budget and the sampled decoding's temperature. On by default."""

    max_new_tokens: int = Field(96, ge=1, le=2048)
    temperature: float = 0.7
    every_point: ClassVar[bool] = True
    on_by_default: ClassVar[bool] = True

    def check(self, spec) -> None:
        if "sampled" in (spec.axes.get("decoding") or []) and not self.temperature > 0:
            raise AtlasError(f"temperature: {self.temperature} must be > 0 for sampled decoding")


PER_ITEM = ("repetition", "loop", "adherence", "new_tokens")
METRICS = ("adherence", "full_adherence", "loop_share", "repetition", "distinct_2", "new_tokens",
           "decode_tokens_per_s", "prefill_s")


def _mean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def output_metrics(tokens: list[int], text: str, constraints: list[dict]) -> dict[str, float]:
    """One output's repetition (4-grams), loop flag (1/0), adherence (share of its constraints met) and length."""
    ok = met(text, constraints)
    return {"repetition": repetition(tokens), "loop": float(looping(tokens)),
            "adherence": sum(ok) / len(ok) if ok else float("nan"), "new_tokens": float(len(tokens))}


def trial_metrics(rows: list[dict[str, float]], continuations: list[list[int]]) -> dict[str, float]:
    """A trial's means over its outputs, loop_share (outputs flagged / outputs) and the share fully met."""
    adherence = [r["adherence"] for r in rows if not math.isnan(r["adherence"])]
    return {"adherence": _mean(adherence), "full_adherence": _mean([float(a == 1.0) for a in adherence]),
            "loop_share": _mean([r["loop"] for r in rows]), "repetition": _mean([r["repetition"] for r in rows]),
            "new_tokens": _mean([r["new_tokens"] for r in rows]), "distinct_2": distinct_n(continuations)}


@kind("generation", axes=GenerationAxes, metrics=METRICS, primary="adherence", layer_axes=(),
      shown=("loop_share", "repetition", "full_adherence", "decode_tokens_per_s"), options={"decode": Decode},
      split=prompt_split)
def generation_trial(ctx: TrialContext, *, decoding: str) -> TrialResult:
    """Decode the prompt set once with `decoding`; per-output and per-trial metrics, continuations as an artifact."""
    model, items = ctx.model, ctx.family.split.eval
    settings = ctx.options["decode"]
    batch = ctx.family.memo(("prompt_batch",), lambda: prompt_batch(model, [i.prompt for i in items]))
    ctx.family.memo(("warm", decoding), lambda: decode(model, batch, WARMUP_TOKENS, decoding, settings["temperature"],
                                                        seeded_generator(ctx.seed)))
    out = decode(model, batch, settings["max_new_tokens"], decoding, settings["temperature"],
                 seeded_generator(ctx.seed))
    continuations = until_eos(out.ids.cpu(), eos_ids(model))
    texts = [model.tokenizer.decode(c, skip_special_tokens=True) for c in continuations]
    rows = [output_metrics(c, t, json.loads(i.constraints)) for c, t, i in zip(continuations, texts, items)]
    metrics = trial_metrics(rows, continuations)
    metrics.update(decode_tokens_per_s=out.decode_tokens / out.decode_s if out.decode_s > 0 else float("nan"),
                   prefill_s=out.prefill_s)
    lines = [json.dumps({"id": i.id, "prompt": i.prompt, "continuation": t, **r,
                         "met": met(t, json.loads(i.constraints))}) for i, t, r in zip(items, texts, rows)]
    return TrialResult(metrics, items={k: [r[k] for r in rows] for k in PER_ITEM},
                       artifacts={"continuations.jsonl": ("\n".join(lines) + "\n").encode("utf-8")})
