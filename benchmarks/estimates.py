"""Benchmark: `sweep --dry-run`'s wall estimate against whole `sweep` processes, on five specs, with each phase of
the measured wall beside the estimate's term for it and the load average through both.

Specs: sweeps/smoke.yaml; first_result.py's `steering112` and `ablation60`; `models2` (an ablation over
smollm2-135m and gemma3-270m, one spec); `screen45` (a head atlas on smollm2-135m screened by attribution, 10 of
45 points verified). Per spec: the dry-run (its estimate and the load it measured), then the sweep in a fresh
folder (a new SQLite store), timed from process start to exit. Phases come from the lines the sweep prints, stamped
as they arrive: imports (to "validating ..."), validation, the gap to "starting a local Ray", Ray's start, Tune's
start to the first result (the actors load the model and build baselines), the trials (first to last result) and
the end (last result to exit). `--phases` prints them (the calibration of cost.py's constants reads them).

    PYTHONPATH=. python benchmarks/estimates.py                 # ~8 min on 2 busy cores
    PYTHONPATH=. python benchmarks/estimates.py --only smoke --phases
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from first_result import ROOT, SPECS, env  # noqa: E402

SPECS = {**SPECS, "models2": """name: models2
kind: ablation
n_train: 8
n_eval: 8
axes:
  model: [smollm2-135m, gemma3-270m]
  seed: [0]
  family: [antonyms]
  component: [layer, mlp]
  method: [mean]
  layer: [{every: 3}]
resources: {cpu: 1, gpu: 0}
""", "screen45": """name: screen45
model: smollm2-135m
kind: ablation
n_train: 8
n_eval: 8
axes:
  seed: [0]
  family: [antonyms]
  component: [head]
  head: [all]
  method: [zero]
  layer: [0, 6, 12, 18, 24]
resources: {cpu: 1, gpu: 0}
screen: {estimate: attribution, verify_top: 5, verify_random: 5}
"""}
MARKS = [  # (phase, pattern of the line that ends it); the first match of each, in order
    ("imports", r"^validating .* \.\.\.$"),
    ("validation", r"^validating .*: \d"),
    ("to ray", r"^starting a local Ray \.\.\.$"),
    ("ray", r"^starting a local Ray: "),
    ("tune to first", r"first result after"),
]


def stamped(cmd: list[str], cwd: Path) -> tuple[float, list[tuple[float, str]], list[float]]:
    """(wall, [(seconds, line)], 1-min load averages sampled every second) of one process."""
    loads: list[float] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)

    def sample() -> None:
        while proc.poll() is None:
            loads.append(os.getloadavg()[0])
            time.sleep(1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
    proc.wait()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n" + "\n".join(t for _, t in lines[-30:]))
    return wall, lines, loads


def phases(wall: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds of each phase of a sweep's wall (see the module docstring)."""
    out, last = {}, 0.0
    for name, pattern in MARKS:
        t = next((t for t, line in lines if re.search(pattern, line)), None)
        if t is None:
            continue
        out[name], last = t - last, t
    done = [t for t, line in lines if re.search(r" points \(100 %\)", line)]
    end = done[-1] if done else last
    out["trials"], out["end"] = end - last, wall - end
    return out


def seconds(text: str) -> float:
    """progress.duration's text back to seconds: '45 s', '12 min 5 s', '1 h 02 min'."""
    units = {"h": 3600, "min": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+) (h|min|s)\b", text))


def eta_at_quarter(wall: float, lines: list[tuple[float, str]]) -> tuple[float, float] | None:
    """(the ETA printed at 25 % of the exact points, the true time left then), or None without one."""
    marks = [(t, m.group(1)) for t, line in lines if "(attribution" not in line and "estimates)" not in line
             and (m := re.search(r" points \(25 %\), .*, eta (.+)$", line))]
    if not marks or "after" in marks[-1][1]:
        return None
    t, text = marks[-1]
    return seconds(text), wall - t


def dry_run(spec: Path) -> tuple[float, str]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        _, lines, _ = stamped([sys.executable, "-m", "orchestrator", "sweep", str(spec), "--dry-run"], Path(tmp))
    text = "\n".join(line for _, line in lines)
    whole = re.search(r"estimate for the sweep: wall ~ ([\d.]+) s", text)  # several models
    return float(whole.group(1)) if whole else sum(float(x) for x in re.findall(r"wall ~ ([\d.]+) s", text)), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["smoke", *SPECS], action="append")
    parser.add_argument("--phases", action="store_true", help="print each sweep's phases and the dry-run's lines")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-specs-") as tmp:
        specs = {"smoke": ROOT / "sweeps" / "smoke.yaml"}
        for name, text in SPECS.items():
            specs[name] = Path(tmp) / f"{name}.yaml"
            specs[name].write_text(text)
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        for name in args.only or list(specs):
            dry_load = os.getloadavg()[0]
            estimate, text = dry_run(specs[name])
            with tempfile.TemporaryDirectory(prefix="bench-") as run_dir:
                wall, lines, loads = stamped([sys.executable, "-m", "orchestrator", "sweep", str(specs[name])],
                                             Path(run_dir))
            load = sum(loads) / max(1, len(loads))
            rows.append((name, estimate, wall, dry_load, load, min(loads, default=0), max(loads, default=0),
                         eta_at_quarter(wall, lines)))
            print(f"{name}: estimate {estimate:.0f} s, measured {wall:.1f} s, ratio {estimate / wall:.2f}; ETA at 25 % "
                  f"{rows[-1][-1]}; load "
                  f"{dry_load:.2f} at the dry-run, {load:.2f} mean ({min(loads):.2f}-{max(loads):.2f}) in the sweep",
                  flush=True)
            if args.phases:
                print("  dry-run: " + "\n  dry-run: ".join(t for t in text.splitlines() if "wall ~" in t
                                                             or "timed here" in t or "load" in t))
                print("  phases: " + ", ".join(f"{k} {v:.1f}" for k, v in phases(wall, lines).items()), flush=True)
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nwhole processes on {os.cpu_count()} CPUs; load average (1/5/15 min) {load_before} before, "
          f"{load_after} after")
    print("| sweep | `--dry-run` estimate | measured wall | estimate / measured | load: dry-run / sweep mean (range) "
          "| ETA at 25 % / true time left |")
    print("|---|---|---|---|---|---|")
    for name, estimate, wall, dry_load, load, lo, hi, eta in rows:
        print(f"| `{name}` | {estimate:.0f} s | {wall:.1f} s | {estimate / wall:.2f} | {dry_load:.2f} / {load:.2f} "
              f"({lo:.2f}–{hi:.2f}) | " + (f"{eta[0]:.0f} s / {eta[1]:.0f} s = {eta[0] / eta[1]:.2f} |" if eta
                                          else "– |"))


if __name__ == "__main__":
    main()
