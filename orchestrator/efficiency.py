"""A sweep's compute efficiency: its trials' model FLOPs per trial-second and per wall second, against the actors'
measured dense matmul rate (the end line and the parent run's metrics)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


def si(value: float) -> str:
    """12.3 G, 450 M: FLOP counts and rates in one short form."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} "


@dataclass
class Efficiency:
    """What the finished trials of one invocation reported: FLOPs, compute seconds, each actor's matmul rate."""

    flops: float = 0.0
    seconds: float = 0.0  # trial compute seconds, summed over actors
    cpu_seconds: float = 0.0  # their CPU time, per torch thread (CPU actors only)
    cpu_flops: float = 0.0  # the FLOPs of the trials that have a CPU time
    rates: dict[str, float] = field(default_factory=dict)  # worker -> its dense matmul FLOP/s
    started: float | None = None  # wall clock of the first Tune round (perf_counter)
    ended: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def stop(self) -> None:
        self.ended = time.perf_counter()

    def add(self, result: dict) -> None:
        """One finished trial's result (worker.run_trial's report); results from before this field are ignored."""
        if "flops" in result:
            self.flops += result["flops"]
            self.seconds += result["compute_seconds"]
            self.rates[result.get("worker", "")] = result["matmul_flops_per_s"]
            if result.get("cpu_seconds") is not None:
                self.cpu_seconds += result["cpu_seconds"] / result.get("threads", 1)
                self.cpu_flops += result["flops"]

    def metrics(self) -> dict[str, float]:
        """FLOP/s per trial-second and per wall second, and each as a fraction of the matmul rate (per actor; the
        wall figure against every actor's rate at once); per CPU-second of a thread, which the machine's other load
        does not lower (on a shared machine the trial-second figure is that times the CPU share the actors got)."""
        if not self.rates or self.seconds <= 0:
            return {}
        rate = statistics.median(self.rates.values())
        wall = (self.ended or time.perf_counter()) - (self.started or time.perf_counter())
        out = {"model_flops": self.flops, "trial_compute_seconds": self.seconds, "matmul_flops_per_s": rate,
               "flops_per_trial_s": self.flops / self.seconds, "efficiency": self.flops / self.seconds / rate}
        if self.cpu_seconds > 0:
            out |= {"flops_per_cpu_s": self.cpu_flops / self.cpu_seconds,
                    "cpu_efficiency": self.cpu_flops / self.cpu_seconds / rate}
        if wall > 0:
            out |= {"flops_per_wall_s": self.flops / wall, "wall_s": wall,
                    "wall_efficiency": self.flops / wall / (rate * len(self.rates))}
        return out

    def line(self) -> str | None:
        m = self.metrics()
        if not m:
            return None
        text = (f"compute: {si(m['model_flops'])}FLOP in {m['trial_compute_seconds']:.1f} trial-s = "
                f"{si(m['flops_per_trial_s'])}FLOP/s per actor, {m['efficiency']:.1%} of its dense matmul rate "
                f"({si(m['matmul_flops_per_s'])}FLOP/s)")
        if "cpu_efficiency" in m:
            text += f", {m['cpu_efficiency']:.1%} per CPU-second"
        if "wall_s" in m:
            text += (f"; {si(m['flops_per_wall_s'])}FLOP/s over {m['wall_s']:.1f} s wall, "
                     f"{m['wall_efficiency']:.1%} of {len(self.rates)} actor(s)' rate")
        return text
