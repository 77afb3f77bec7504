"""Two drivers, one sweep, any machines: the running driver's lease on its parent run (a tag it renews) refuses a
second driver elsewhere, naming the holder; an expired lease is taken only with --take-over."""
from __future__ import annotations

import json
import re
import time

import pytest

from orchestrator.tracking import HOST_ENV, LEASE_ENV, LEASE_TAG, Lease, Tracker
from tests.conftest import run_main, store, tiny_steering

SMALL = tiny_steering("lease_small") + "baseline: {shots: 0}\n"


def held_by(tmp_path, host: str, expires_in: float) -> tuple:
    """The store as a driver on machine `host` leaves it while it runs: a RUNNING parent with its lease."""
    (tmp_path / "mlruns").mkdir()
    client = store(tmp_path)
    exp = client.create_experiment("lease_small")
    lease = {"driver": f"{host}:4242:1700000000", "expires": time.time() + expires_in}
    run = client.create_run(exp, tags={"orchestrator.role": "parent", "orchestrator.driver": lease["driver"],
                                       LEASE_TAG: json.dumps(lease)})
    return client, exp, run.info.run_id


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(HOST_ENV, "machine-b")
    (tmp_path / "spec.yaml").write_text(SMALL)
    return tmp_path


def test_a_live_lease_on_another_machine_refuses_a_second_driver_even_with_take_over(here, monkeypatch, capsys):
    client, exp, _ = held_by(here, "machine-a", 45)
    for args in ((), ("--take-over",)):
        code, _, err = run_main(monkeypatch, capsys, "sweep", "spec.yaml", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "being run right now by driver machine-a:4242 on another machine" in err
        assert re.search(r"its lease, renewed while it runs, ends in (4[0-5]) s\); wait for it or stop it", err), err
    assert len(client.search_runs([exp])) == 1  # nothing written


def test_an_expired_lease_is_taken_only_with_take_over(here, monkeypatch, capsys):
    held_by(here, "machine-a", -30)
    code, _, err = run_main(monkeypatch, capsys, "sweep", "spec.yaml")
    assert code == 2 and "driver machine-a:4242 on another machine, and its lease expired 30 s ago" in err, err
    assert "rerun with --take-over" in err


def test_the_lease_is_renewed_while_the_driver_runs(tmp_path, monkeypatch):
    from orchestrator.spec import load_sweep

    monkeypatch.setenv(LEASE_ENV, "0.6")
    (tmp_path / "spec.yaml").write_text(SMALL)
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", load_sweep(tmp_path / "spec.yaml"))
    run_id = tracker.start_parent(2, 2)
    lease = Lease(tracker)
    lease.hold(run_id)
    try:
        time.sleep(1.5)  # 2.5 leases: an unrenewed one would have expired
        expires = json.loads(tracker.client.get_run(run_id).data.tags[LEASE_TAG])["expires"]
        assert expires > time.time()
    finally:
        lease.close()
    time.sleep(0.7)
    expires = json.loads(tracker.client.get_run(run_id).data.tags[LEASE_TAG])["expires"]
    assert expires < time.time()  # closed: no longer renewed
