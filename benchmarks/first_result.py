"""Benchmark: whole `python -m orchestrator sweep` processes, in one run: time to first result, the 112-point
steering grid against a plain per-trial PyTorch loop (also a whole process), and `--dry-run` estimates against
the measured walls.

Every sweep runs as the CLI in a fresh folder (a new SQLite store: MLflow's set-up is inside the timing) and is
timed from process start to exit; its first result is the first FINISHED child run seen in the store (polled
read-only every 0.1 s). The plain loop is `benchmarks/sweep_vs_loop.py: plain_loop` in a process of its own
(`--plain-loop SPEC`): imports, model load, per (family, seed) the clean run and vectors, one hooked full forward
per grid point, nothing logged. The sweep and the loop alternate which goes first; figures are medians of
`--repeats`, and the paired ratios are shown too.

Sweeps: sweeps/smoke.yaml; `steering112` (1 family, 7 layers x 8 strengths x 2 vector types, n_eval 12, on
the embedded model); `ablation60` (a small ablation atlas: layer, attn, mlp x mean, zero x 10 layers, 1 family).

    PYTHONPATH=. python benchmarks/first_result.py                # ~10 min on 2 cores
    PYTHONPATH=. python benchmarks/first_result.py --only smoke --repeats 3
"""
from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "steering112": """name: steering112
model: smollm2-135m
kind: steering
n_train: 32
n_eval: 12
axes:
  seed: [0]
  family: [antonyms]
  layer: [2, 6, 10, 14, 18, 22, 26]
  strength: [-1, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1]
  vector_type: [mean_diff, random]
resources: {cpu: 1, gpu: 0}
""",
    "ablation60": """name: ablation60
model: smollm2-135m
kind: ablation
n_train: 16
n_eval: 12
axes:
  seed: [0]
  family: [antonyms]
  component: [layer, attn, mlp]
  method: [mean, zero]
  layer: [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
resources: {cpu: 1, gpu: 0}
""",
}


def env() -> dict:
    out = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def first_finished(db: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("select 1 from runs r join tags t on r.run_uuid = t.run_uuid where t.key = "
                               "'orchestrator.role' and t.value = 'trial' and r.status = 'FINISHED' limit 1"
                               ).fetchone() is not None
    except sqlite3.Error:
        return False


def timed(cmd: list[str], cwd: Path, db: Path | None = None) -> tuple[float, float | None, str]:
    """(wall, seconds to the first FINISHED child run, output) of one process."""
    first: list[float] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def poll() -> None:
        while proc.poll() is None and not first:
            if db is not None and first_finished(db):
                first.append(time.perf_counter() - start)
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-3000:]}")
    return wall, (first[0] if first else None), out


def sweep(spec: Path) -> tuple[float, float | None, int]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        wall, first, _ = timed([sys.executable, "-m", "orchestrator", "sweep", str(spec)], Path(tmp),
                               Path(tmp) / "mlruns" / "mlflow.db")
        with sqlite3.connect(Path(tmp) / "mlruns" / "mlflow.db") as con:
            rss = con.execute("select max(cast(value as integer)) from tags where key = 'orchestrator.peak_rss_mb'"
                              ).fetchone()[0]
    return wall, first, rss or 0


def dry_run(spec: Path) -> tuple[float, float, str]:
    """The --dry-run estimate: (wall seconds, peak MB per actor, its lines)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        _, _, out = timed([sys.executable, "-m", "orchestrator", "sweep", str(spec), "--dry-run"], Path(tmp))
    wall = float(re.search(r"wall ~ ([\d.]+) s", out).group(1))
    peak = float(re.search(r"peak memory per actor ~ ([\d.]+) MB", out).group(1))
    return wall, peak, out


def plain_loop_process(spec: Path) -> None:
    """--plain-loop: the hand-written loop over the spec's grid, as its own process (timed from outside)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sweep_vs_loop import plain_loop

    from orchestrator.grid import expand
    from orchestrator.spec import load_sweep

    loaded = load_sweep(spec)
    plain_loop(loaded, expand(loaded))


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["smoke", "steering112", "ablation60"])
    parser.add_argument("--plain-loop", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_loop:
        return plain_loop_process(args.plain_loop)
    with tempfile.TemporaryDirectory(prefix="bench-specs-") as tmp:
        specs = {"smoke": ROOT / "sweeps" / "smoke.yaml"}
        for name, text in SPECS.items():
            specs[name] = Path(tmp) / f"{name}.yaml"
            specs[name].write_text(text)
        names = [args.only] if args.only else list(specs)
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        results = {}
        for name in names:
            estimate, peak, _ = dry_run(specs[name])
            walls, firsts, loops, rss = [], [], [], []
            for r in range(args.repeats):
                sides = ["sweep", "loop"] if name == "steering112" else ["sweep"]
                for side in sides if r % 2 == 0 else reversed(sides):
                    if side == "sweep":
                        wall, first, top = sweep(specs[name])
                        walls.append(wall)
                        firsts.append(first)
                        rss.append(top)
                    else:
                        loops.append(timed([sys.executable, __file__, "--plain-loop", str(specs[name])], ROOT)[0])
                print(f"{name} repetition {r + 1}: sweep {walls[-1]:.1f} s (first result {firsts[-1]:.1f} s)"
                      + (f", plain loop {loops[-1]:.1f} s" if loops else "") + f"; load {os.getloadavg()[0]:.2f}",
                      flush=True)
            results[name] = (estimate, peak, walls, firsts, loops, rss)
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nwhole processes on {os.cpu_count()} CPUs, medians of {args.repeats}; load average (1/5/15 min) "
          f"{load_before} before, {load_after} after")
    for name, (estimate, peak, walls, firsts, loops, rss) in results.items():
        wall = statistics.median(walls)
        print(f"{name}: sweep {wall:.1f} s ({fmt(walls)}), first result {statistics.median(firsts):.1f} s "
              f"({fmt(firsts)}); --dry-run estimate {estimate:.0f} s ({estimate / wall:.2f} of measured); peak RSS "
              f"per actor {max(rss)} MB measured, {peak:.0f} MB estimated")
        if loops:
            loop = statistics.median(loops)
            paired = ", ".join(f"{a / b:.2f}" for a, b in zip(walls, loops))
            print(f"  plain per-trial loop {loop:.1f} s ({fmt(loops)}); ratio sweep / loop {wall / loop:.2f} "
                  f"(paired: {paired})")


if __name__ == "__main__":
    main()
