"""The keeper (orchestrator/supervise.py) on stand-in drivers: a driver that dies without noting an exit is started
again on a local Ray, at most max_failures times; one that joined a cluster is not; one that ended by itself
(any exit code) or was signalled is never started again; killing the keeper kills its driver."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from orchestrator.supervise import keep

DRIVER = textwrap.dedent("""
    import os, signal, sys
    from orchestrator.supervise import note, RESTART_ENV
    restart = int(os.environ[RESTART_ENV])
    open(sys.argv[1], "a").write(f"{restart}\\n")
    note(name="toy", max_failures=int(sys.argv[2]))
    if restart < int(sys.argv[3]):  # dies as Ray ends a driver whose raylet died: no Python cleanup, no exit noted
        os.kill(os.getpid(), signal.SIGKILL)
    note(exit=int(sys.argv[4]))
    sys.exit(int(sys.argv[4]))
""")


@pytest.fixture
def driver(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    starts = tmp_path / "starts"

    def run(max_failures: int, deaths: int, code: int = 0, *extra: str) -> tuple[int, list[str]]:
        got = keep([str(starts), str(max_failures), str(deaths), str(code), *extra], (sys.executable, str(script)))
        return got, starts.read_text().split()

    return run


def test_a_driver_that_dies_without_an_exit_is_started_again_until_it_ends(driver, capsys):
    assert driver(3, 2) == (0, ["0", "1", "2"])
    err = capsys.readouterr().err
    assert "driver restart 1 of at most 3" in err and "driver restart 2 of at most 3" in err
    assert "toy: finished after 2 driver restarts" in err


def test_an_exit_the_driver_chose_is_kept_and_never_restarted(driver):
    assert driver(3, 0, 2) == (2, ["0"])  # bad input
    assert driver(3, 0, 1)[0] == 1  # trials failed after retries


def test_restarts_stop_at_max_failures(driver, capsys):
    assert driver(1, 5) == (1, ["0", "1"])
    assert "2 times (max_failures: 1)" in capsys.readouterr().err


def test_a_driver_that_joined_a_cluster_is_not_restarted(driver, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert driver(3, 1, 0, "--address", "10.0.0.1:6379") == (1, ["0"])
    err = capsys.readouterr().err
    assert "the Ray cluster at 10.0.0.1:6379 is not started here" in err and "rerun the same command" in err


def test_killing_the_keeper_kills_its_driver(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nfrom orchestrator.supervise import note\nnote(name='toy', max_failures=3)\n"
                      "time.sleep(60)\n")
    keeper = subprocess.Popen([sys.executable, "-c", "import sys; from orchestrator.supervise import keep; "
                               f"sys.exit(keep([], (sys.executable, {str(script)!r})))"],
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 20
    while time.time() < deadline and not psutil.Process(keeper.pid).children():
        time.sleep(0.05)
    (child,) = psutil.Process(keeper.pid).children()
    keeper.send_signal(signal.SIGKILL)
    keeper.wait(timeout=10)
    gone, alive = psutil.wait_procs([child], timeout=10)
    assert not alive, "the driver outlived its keeper"
