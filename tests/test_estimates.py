"""The ETA under a changing load (progress.eta, pure) and the dry-run's load model (cost.py), without Ray."""
from __future__ import annotations

import pytest

from orchestrator import cost, progress


def trace(n: int, rate, start: float = 60.0):
    """(time, work done) after each of n unit points, the first at `start`; rate(i) = points per second then."""
    t, out = start, [(start, 1.0)]
    for i in range(1, n):
        t += 1.0 / rate(i)
        out.append((t, i + 1.0))
    return out


def load_rate(load: float, cpus: int = 2, own: int = 3) -> float:
    """Points per second of a CPU-bound sweep whose `own` processes share `cpus` cores with `load` others."""
    return 1.0 / max(1.0, (load + own) / cpus)


def test_the_eta_at_a_quarter_follows_a_load_that_fell_before_it():
    """Load 8 for the first 15 % of the points, then 4 (the range a new user saw on the main job): at 25 % done
    the ETA is within 25 % of the true time left; the overall rate since the first result is not."""
    n = 2000
    marks = trace(n, lambda i: load_rate(8) if i < n * 15 // 100 else load_rate(4))
    quarter = n // 4
    truth = marks[-1][0] - marks[quarter - 1][0]
    got = progress.eta(marks[:quarter], float(n))
    assert abs(got / truth - 1) < 0.25, (got, truth)
    overall = (n - quarter) / ((quarter - 1) / (marks[quarter - 1][0] - marks[0][0]))
    assert abs(overall / truth - 1) > 0.25, (overall, truth)  # the old ETA: the rate since the first result


def test_the_eta_from_a_quarter_on_stays_within_a_quarter_under_a_fluctuating_load():
    """The load swings between 4 and 8 every 150 points (about a minute): every ETA from 25 % done is within 25 %."""
    n = 2000
    marks = trace(n, lambda i: load_rate(8 if (i // 150) % 2 else 4))
    errors = [progress.eta(marks[:k], float(n)) / (marks[-1][0] - marks[k - 1][0]) - 1
              for k in range(n // 4, n - 100, 50)]
    assert max(map(abs, errors)) < 0.25, max(errors, key=abs)


def test_the_eta_adds_the_end_and_waits_for_a_second_of_work():
    marks = [(0.0, 1.0), (0.5, 2.0)]
    assert progress.eta(marks, 10.0) is None  # half a second timed
    marks.append((2.0, 3.0))
    assert progress.eta(marks, 10.0, end_s=5.0) == pytest.approx(7 / (2 / 2.0) + 5.0)


def test_a_knock_out_point_weighs_its_families():
    values = {"layer": 10, "strength": -1.0}
    assert progress.point_cost(values, ("layer",), 30, True, families=3) == 3 * 21
    assert progress.point_cost({**values, "strength": 1.0}, ("layer",), 30, True, families=3) == 21


def test_fixed_costs_divide_their_cpu_part_by_the_share_and_keep_the_wait():
    assert cost.fixed((2.0, 3.0), 0.25) == pytest.approx(2.0 / 0.25 + 3.0)


def test_the_probe_sees_a_busy_core_taken():
    """Shares.probe: spinning processes on this machine get at most a core each, and a nice-19 actor never more
    than the nice-0 driver's share when both want the same cores (it may get less)."""
    shares = cost.Shares.probe(n_actors=1, seconds=0.3)
    assert 0.01 <= shares.actor <= 1.0 and 0.01 <= shares.driver <= 1.0
