"""Benchmark: greedy decode speed per model x precision, one after another in one process, one torch thread.

The generation sweep's `decode_tokens_per_s` is timed inside trials that may share the cores with another actor,
and counts only rows still decoding, so a precision whose outputs end sooner reads slower. Here every (model,
precision) decodes the same 8 prompts of the built-in set (chat template where the tokenizer has one) for a fixed
number of steps with end-of-sequence ignored, after an untimed 2-token warm-up, alone on the machine: tokens/s =
rows x timed steps / seconds. Beside the speed, agreement: the share of greedy tokens equal to float32's, position
by position up to each row's first difference (a prefix share: after one differing token the rest is another text).

    PYTHONPATH=. python benchmarks/decode_speed.py                       # the four built-in models, ~6 min
    PYTHONPATH=. python benchmarks/decode_speed.py --models smollm2-135m --precisions float32 nf4 --steps 16
"""
from __future__ import annotations

import argparse
import gc
import os
import time

import torch

from interventions.decoding import decode, prompt_batch
from interventions.generation_check import builtin_prompts
from interventions.models import load

MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
PRECISIONS = ["float32", "bfloat16", "float16", "int8", "nf4"]


def prefix_agreement(ids: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of positions equal to the reference's before each row's first difference."""
    same = (ids == reference).int().cumprod(dim=1)
    return float(same.sum()) / same.numel()


def one(model_name: str, precision: str, prompts: list[str], steps: int) -> tuple[dict, torch.Tensor]:
    start = time.perf_counter()
    model = load(model_name, dtype=precision)
    loaded = time.perf_counter() - start
    model.module.generation_config.eos_token_id = []  # a fixed number of steps for every precision
    batch = prompt_batch(model, prompts)
    decode(model, batch, 2)
    out = decode(model, batch, steps)
    row = {"model": model_name, "precision": precision, "load_s": loaded, "prefill_s": out.prefill_s,
           "tok_s": out.decode_tokens / out.decode_s}
    ids = out.ids.cpu()
    del model, out
    gc.collect()
    return row, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = [item.prompt for item in builtin_prompts()[:args.prompts]]
    print(f"{args.prompts} prompts x {args.steps} greedy steps, 1 torch thread, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    print(f"{'model':<20} {'precision':<9} {'load s':>7} {'prefill s':>9} {'tok/s':>7} {'vs f32':>7} {'vs bf16':>7} "
          f"{'agree f32':>9}")
    for model_name in args.models:
        rows, ids = [], {}
        for precision in args.precisions:
            row, ids[precision] = one(model_name, precision, prompts, args.steps)
            rows.append(row)
        speed = {r["precision"]: r["tok_s"] for r in rows}
        for r in rows:
            ref = ids.get("float32")
            agree = prefix_agreement(ids[r["precision"]], ref) if ref is not None else float("nan")
            print(f"{r['model']:<20} {r['precision']:<9} {r['load_s']:7.1f} {r['prefill_s']:9.2f} {r['tok_s']:7.1f} "
                  f"{r['tok_s'] / speed.get('float32', float('nan')):7.2f} "
                  f"{r['tok_s'] / speed.get('bfloat16', float('nan')):7.2f} {agree:9.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
