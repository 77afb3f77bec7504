"""`orchestrator ui`: the MLflow UI on the sweep store, on loopback unless asked; its URL printed once it answers;
SIGINT or SIGTERM stop the server's whole process group (mlflow, uvicorn and its workers)."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Callable

from interventions.registry import AtlasError
from orchestrator.store import default_store, store_dir

STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL for the server's group


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(host: str, port: int) -> str:
    """Where a browser on this machine reaches the server (a wildcard bind is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_port(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise AtlasError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); is another "
                         "`orchestrator ui` running? pass another --port") from None


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/health", timeout=2).close()
        return True
    except OSError:
        return False


def sweeps(url: str) -> list[tuple[str, str]]:
    """(name, id) of the store's experiments, newest first (what the server lists; empty if it cannot)."""
    body = json.dumps({"max_results": 50, "order_by": ["creation_time DESC"]}).encode()
    request = urllib.request.Request(url + "/api/2.0/mlflow/experiments/search", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            found = json.load(answer).get("experiments", [])
    except (OSError, ValueError):
        return []
    return [(e["name"], e["experiment_id"]) for e in found if e["name"] != "Default"]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to what is left of it after STOP_GRACE seconds."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reaps the leader; its workers leave the group when they exit
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            continue
        break
    proc.poll()


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: unwind (out of any wait) to the code that stops the server."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def serve_ui(uri: str, host: str, port: int, ready: Callable[[str], None] = print, timeout: float = 180.0) -> int:
    """Run the MLflow server on the store until it exits or this process gets SIGINT/SIGTERM; returns an exit code
    (the server's, or 128 + the signal's number).

    `ready(base_url)` is called once the server answers its /health endpoint.
    """
    check_port(host, port)
    if default_store(uri):
        store_dir().mkdir(exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]  # one local user; four workers take four times as long to start
    if default_store(uri):
        cmd += ["--artifacts-destination", str(store_dir() / "artifacts")]

    def shut(signum, frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # one stop at a time
        raise Stopped(signum)

    previous = {s: signal.signal(s, shut) for s in (signal.SIGINT, signal.SIGTERM)}
    proc = None
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # its own group: stopped as one
        url, deadline = base_url(host, port), time.monotonic() + timeout
        while proc.poll() is None and not answers(url):
            if time.monotonic() > deadline:
                raise AtlasError(f"--port {port}: the MLflow server did not answer within {timeout:.0f} s")
            time.sleep(0.3)
        if proc.poll() is None:
            ready(url)
        return proc.wait()
    except Stopped as stopped:
        return 128 + stopped.signum
    finally:
        if proc is not None:
            stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
