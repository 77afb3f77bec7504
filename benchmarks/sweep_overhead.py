"""Benchmark: what a sweep costs beyond the arithmetic, as whole processes in one run: `python -m orchestrator sweep`
on the 112-point steering grid against a stacked plain loop doing the same arithmetic, and the smoke sweep end to end.

The stacked loop is `benchmarks/efficiency.py: steering_loop(stacked=True)` in a process of its own (`--stacked-loop
SPEC`): imports, model load, the clean run and vectors, then per (layer, vector type) every strength stacked into
one batch that starts from the cached clean stream; torch's default threads, nothing logged. The grid is
`first_result.py`'s steering112 with `baseline: {shots: 0}`, so both sides compute the same 112 points (the sweep
would otherwise add its prompting-baseline point). Every sweep runs in a fresh folder (a new SQLite store), timed
from process start to exit.

`--before DIR` also runs the sweeps with another checkout's code (e.g. `git archive <commit> | tar -x -C DIR`),
interleaved with this one's, so that before and after are measured in one run under the same load.

    PYTHONPATH=. python benchmarks/sweep_overhead.py --repeats 2 [--before /tmp/base]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from first_result import SPECS  # noqa: E402

STEERING112 = SPECS["steering112"].replace("resources:", "baseline: {shots: 0}\nresources:")


def run(cmd: list[str], cwd: Path, code: Path) -> float:
    """Wall seconds of one process, with `code` first on its path."""
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return wall


def sweep(spec: Path, code: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        return run([sys.executable, "-m", "orchestrator", "sweep", str(spec)], Path(tmp), code)


def stacked_loop_process(spec: Path) -> None:
    """--stacked-loop: the stacked plain loop over the spec's steering points, as its own process."""
    import torch
    from efficiency import steering_loop

    from interventions.context import FamilyRun
    from interventions.models import load
    from orchestrator.grid import expand
    from orchestrator.spec import load_sweep

    loaded = load_sweep(spec)
    model = load(loaded.parts[0].name)
    for (family, seed), split in loaded.parts[0].splits.items():
        points = [p.values for p in expand(loaded) if (p.values["family"], p.values["seed"]) == (family, seed)]
        with torch.no_grad():
            steering_loop(model, FamilyRun(model, split), points, stacked=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", type=Path, help="another checkout whose sweeps run interleaved with this one's")
    parser.add_argument("--skip-smoke", action="store_true")
    parser.add_argument("--stacked-loop", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stacked_loop:
        return stacked_loop_process(args.stacked_loop)
    codes = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    walls: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-specs-") as tmp:
        grid = Path(tmp) / "steering112.yaml"
        grid.write_text(STEERING112)
        smoke = ROOT / "sweeps" / "smoke.yaml"
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        for r in range(args.repeats):
            sides = [("stacked loop", None), *((f"sweep {k}", v) for k, v in codes.items())]
            sides += [] if args.skip_smoke else [(f"smoke {k}", v) for k, v in codes.items()]
            for name, code in sides if r % 2 == 0 else reversed(sides):
                if name == "stacked loop":
                    wall = run([sys.executable, __file__, "--stacked-loop", str(grid)], ROOT, ROOT)
                else:
                    wall = sweep(smoke if name.startswith("smoke") else grid, code)
                walls.setdefault(name, []).append(wall)
                print(f"repetition {r + 1}: {name} {wall:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nwhole processes on {os.cpu_count()} CPUs, medians of {args.repeats}; load average (1/5/15 min) "
          f"{load_before} before, {load_after} after")
    loop = walls["stacked loop"]
    for name, values in walls.items():
        line = f"  {name:<14} {statistics.median(values):6.1f} s ({', '.join(f'{v:.1f}' for v in values)})"
        if name.startswith("sweep"):
            paired = ", ".join(f"{a / b:.2f}" for a, b in zip(values, loop))
            line += f"; / stacked loop {statistics.median(values) / statistics.median(loop):.2f} (paired: {paired})"
        print(line)


if __name__ == "__main__":
    main()
