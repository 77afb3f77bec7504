"""`orchestrator ui`: the MLflow UI on the sweep store, bound to loopback unless asked otherwise."""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

from orchestrator.store import default_store, store_dir


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_ui(uri: str, host: str, port: int) -> int:
    """Run the MLflow UI on the store until interrupted; returns its exit code."""
    if default_store(uri):
        store_dir().mkdir(exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if default_store(uri):
        cmd += ["--artifacts-destination", str(store_dir() / "artifacts")]
    return subprocess.call(cmd, env=env)
