"""A screened ablation sweep through the CLI (Ray Tune into MLflow): one estimate run per grid point, one exact run
per verified point (the top-k by |estimate| plus the seeded sample, chosen from the logged estimates), estimates
never in the resume ledger; a crashed estimate trial, a rerun, and a killed driver lose and duplicate nothing."""
from __future__ import annotations

import signal
import time
from collections import Counter

import psutil
import pytest

from orchestrator.grid import expand
from orchestrator.screen import group_of, select
from orchestrator.spec import load_sweep
from tests.conftest import children, cli, crash_once_env, finished_now, role, spec, start, sweep_runs

pytestmark = pytest.mark.slow  # Ray and subprocess CLIs, end to end

TOP, RANDOM = 3, 2
SCREENED = spec("ablation", "screened", n_train=6, n_eval=4, family=["antonyms", "factual_recall"],
                component=["head", "attn"], head="all", method=["zero", "clean_to_corrupt"], layer=[0, 1, 2, 3],
                extra={"resources": {"cpu": 1, "gpu": 0}, "execution": {"pack": 1},
                       "screen": {"verify_top": TOP, "verify_random": RANDOM, "seed": 1}})


def estimates_of(runs) -> dict[str, object]:
    found = role(runs, "estimate", "FINISHED")
    ids = Counter(r.data.tags["orchestrator.trial_id"] for r in found)
    assert max(ids.values()) == 1, "an estimate logged twice"
    return {r.data.tags["orchestrator.trial_id"]: r for r in found}


def check_record(cwd, points) -> tuple[dict, dict]:
    """Every grid point estimated once; the exact runs are exactly the verify set chosen from the logged estimates."""
    runs = sweep_runs(cwd, "screened")
    est = estimates_of(runs)
    assert set(est) == {p.trial_id for p in points}
    for run in est.values():
        assert run.data.tags["orchestrator.estimate"] == "attribution"
        assert set(run.data.metrics) == {"ld_drop_estimate", "ld_shift_estimate"}
    scores = {p.trial_id: (group_of(p.values), est[p.trial_id].data.metrics["ld_shift_estimate"]) for p in points}
    want = select(scores, TOP, RANDOM, 1)
    exact = Counter(r.data.tags["orchestrator.trial_id"] for r in children(runs))
    assert set(exact) == set(want) and max(exact.values()) == 1
    for run in children(runs):
        assert run.data.tags["orchestrator.verify"] == want[run.data.tags["orchestrator.trial_id"]]
        assert "ld_drop" in run.data.metrics and "ld_drop_estimate" not in run.data.metrics
    return est, want


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("screened")
    (cwd / "screened.yaml").write_text(SCREENED)
    marker = cwd / "crash"
    marker.mkdir()
    done = cli(cwd, "sweep", "screened.yaml", env=crash_once_env(marker))  # the first estimate trial's worker dies
    assert done.returncode == 0, done.stdout + done.stderr
    assert (marker / "crashed").exists(), "the fault was not injected"
    assert "worker failed (" in done.stdout or "runs again on fresh actors" in done.stdout, done.stdout  # retried
    return cwd, done, expand(load_sweep(cwd / "screened.yaml"))


def test_estimates_every_point_and_verifies_the_top_k_plus_the_sample_exactly(screened):
    cwd, done, points = screened
    _, want = check_record(cwd, points)
    groups = {group_of(p.values) for p in points}
    assert len(want) == len(groups) * (TOP + RANDOM)
    line = f"{len(points)} grid points estimated by attribution ({len(points)} now); verifying {len(want)}"
    assert line in done.stdout
    parent = role(sweep_runs(cwd, "screened"), "parent")[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["to_run"] == len(want)
    assert "Spearman" in done.stdout


def test_a_rerun_computes_nothing_again(screened):
    cwd, _, points = screened
    before = {r.info.run_id for r in sweep_runs(cwd, "screened") if r.data.tags.get("orchestrator.role") != "parent"}
    again = cli(cwd, "sweep", "screened.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"all {len(points)} grid points already estimated and the" in again.stdout, again.stdout
    assert "nothing to run" in again.stdout and "Spearman" in again.stdout  # the agreement table again
    after = {r.info.run_id for r in sweep_runs(cwd, "screened") if r.data.tags.get("orchestrator.role") != "parent"}
    assert after == before
    check_record(cwd, points)


def test_a_killed_driver_resumes_without_recomputing_estimates_or_duplicating_exact_runs(tmp_path):
    (tmp_path / "screened.yaml").write_text(SCREENED)
    points = expand(load_sweep(tmp_path / "screened.yaml"))
    proc = start(tmp_path, "sweep", "screened.yaml")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if len(finished_now(tmp_path)) >= 2:  # exact runs, read straight from SQLite (the driver writes)
                break
            time.sleep(0.3)
        leftover = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, alive = psutil.wait_procs(leftover, timeout=3)
    for p in alive:
        p.kill()
    runs = sweep_runs(tmp_path, "screened")
    first_estimates = {r.info.run_id for r in role(runs, "estimate", "FINISHED")}
    first_exact = len(children(runs))
    assert len(first_estimates) == len(points) and 2 <= first_exact, first_exact
    resumed = cli(tmp_path, "sweep", "screened.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "(0 now)" in resumed.stdout and f"{first_exact} already finished" in resumed.stdout
    est, _ = check_record(tmp_path, points)
    assert {r.info.run_id for r in est.values()} == first_estimates  # not one estimate computed again
