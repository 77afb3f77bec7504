"""Device check: steering trials on CUDA agree with the CPU, leave no hooks, and their forward passes are timed.

    python benchmarks/gpu_check.py          # needs a CUDA GPU; uses the tiny models only
"""
from __future__ import annotations

import time

import torch

from interventions.context import FamilyRun, TrialContext
from interventions.families import make_split
from interventions.hooks import count_hooks
from interventions.kinds import run_kind
from interventions.models import load
from interventions.steering import VECTORS


def steering_trial(ctx, **point) -> dict[str, float]:
    """One grid point through the kind registry, as a worker runs it."""
    return run_kind("steering", ctx, point).metrics


def contexts(name: str, device: str) -> TrialContext:
    model = load(name, device=device)
    splits = [make_split(f, 0, model.tokenizer, 16, 16, None) for f in ("antonyms", "capitalization")]
    return TrialContext(model, 0, FamilyRun(model, splits[0]), [FamilyRun(model, splits[1])])


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    print(torch.cuda.get_device_name(0), torch.__version__)
    worst = 0.0
    for name in ("tiny-llama", "tiny-qwen2"):
        cpu, gpu = contexts(name, "cpu"), contexts(name, "cuda")
        for vector_type in VECTORS.names():
            for strength in (-1.0, 0.0, 2.0):
                a = steering_trial(cpu, layer=1, strength=strength, vector_type=vector_type)
                b = steering_trial(gpu, layer=1, strength=strength, vector_type=vector_type)
                assert a.keys() == b.keys()
                for k in a:
                    err = abs(a[k] - b[k]) / max(1.0, abs(a[k]))
                    worst = max(worst, err)
                    assert err < 1e-3, (name, vector_type, strength, k, a[k], b[k])
        assert count_hooks(gpu.model.module) == 0
        start = time.perf_counter()
        for _ in range(20):
            steering_trial(gpu, layer=0, strength=1.0, vector_type="mean_diff")
        torch.cuda.synchronize()
        print(f"{name}: cuda == cpu (worst relative difference {worst:.2e}); "
              f"{(time.perf_counter() - start) / 20 * 1000:.1f} ms per steering trial on the GPU")
    print("GPU CHECK OK")


if __name__ == "__main__":
    main()
