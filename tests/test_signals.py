"""Signals on the real CLI: Ctrl-C (SIGINT to the whole process group, as a terminal sends it) at every stage of a
tiny sweep exits 130 with no traceback and leaves no RUNNING run or process; SIGTERM to `ui` frees its port."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time

import psutil
import pytest

from tests.conftest import SMOKE, free_port, start

pytestmark = pytest.mark.slow  # subprocess CLIs, Ray and an MLflow server, end to end


def statuses(cwd) -> dict[str, int]:
    db = cwd / "mlruns" / "mlflow.db"
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return dict(con.execute("select status, count(*) from runs group by status").fetchall())


def group_alive(pgid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def interrupt(cwd, when) -> tuple[int, str]:
    """Start the smoke sweep; at `when` (seconds, or the first output line containing the text) send SIGINT to its
    process group; return (exit code, everything it printed)."""
    proc = start(cwd, "sweep", str(SMOKE))
    seen = []
    try:
        if isinstance(when, float):
            time.sleep(when)
        else:
            for line in proc.stdout:
                seen.append(line)
                if when in line:
                    break
            else:
                raise AssertionError(f"never saw {when!r}: {''.join(seen)}")
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 15
    while group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not group_alive(proc.pid), [p.cmdline() for p in group_alive(proc.pid)]
    return proc.returncode, "".join(seen) + rest


@pytest.mark.parametrize("when", [1.5, "validating smoke.yaml", "starting a local Ray ...", "points to run",
                                  "first result after", "32/32 points"],
                         ids=["importing", "validating", "starting Ray", "starting Tune", "during trials",
                              "during the summary"])
def test_ctrl_c_at_any_stage_exits_130_cleanly(tmp_path, when):
    code, out = interrupt(tmp_path, when)
    assert code == 130, out
    assert "Traceback" not in out and "Segmentation fault" not in out, out
    assert "RUNNING" not in statuses(tmp_path), statuses(tmp_path)
    if when in ("first result after", "32/32 points"):
        found = statuses(tmp_path)
        assert found.get("KILLED") == 1 and found.get("FINISHED", 0) >= 1, found  # finished points were kept
        assert "rerun the same command" in out, out


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_ui_stops_the_server_group_and_frees_the_port(tmp_path, sig):
    port = free_port()
    proc = start(tmp_path, "ui", "--port", str(port))
    lines = []
    try:
        for line in proc.stdout:  # the address is printed only once the server answers
            lines.append(line)
            if line.startswith("MLflow UI: http"):
                break
        assert listening(port), "".join(lines)
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        assert servers, "no server process"
        proc.send_signal(sig)  # to the CLI only: it must stop the server's group itself
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, proc.returncode
    gone, alive = psutil.wait_procs(servers, timeout=5)
    assert not alive, [p.cmdline() for p in alive]
    assert not listening(port)
