"""Fault injection for the end-to-end tests, kept out of the production code: a test that runs the CLI puts this
folder first on the subprocess's PYTHONPATH (tests.conftest.INJECT), so that every Python process of that sweep,
the driver and the local Ray's workers (they inherit its environment), imports this file at start-up.

It wraps `orchestrator.worker.run_trial` as that module is first imported, with two faults, each set by a variable:
- `ATLAS_CRASH_ONCE_DIR`: the first trial to create the marker file `$ATLAS_CRASH_ONCE_DIR/crashed` kills its worker
  process with os._exit(1) (no cleanup, as a segfault or the OOM killer would); every other trial, and every trial
  once the marker exists, runs unchanged.
- `ATLAS_TRIAL_DELAY_S`: every trial sleeps that long first, so that a test acting mid-sweep (a signal, a kill) acts
  while trials are still to run, however fast the machine runs the rest.
The wrapper keeps run_trial's module and name, so Ray pickles it by reference and each worker gets its own copy.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
import time

TARGET = "orchestrator.worker"
MARKER = "crashed"


def crash_once() -> None:
    if not os.environ.get("ATLAS_CRASH_ONCE_DIR"):
        return
    try:
        os.close(os.open(os.path.join(os.environ["ATLAS_CRASH_ONCE_DIR"], MARKER), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os._exit(1)


def wrap(module) -> None:
    inner = module.run_trial

    @functools.wraps(inner)
    def run_trial(*args, **kwargs):
        crash_once()
        time.sleep(float(os.environ.get("ATLAS_TRIAL_DELAY_S", 0)))
        return inner(*args, **kwargs)

    module.run_trial = run_trial


class WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds orchestrator.worker as the path finder does, and wraps run_trial once the module has run."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            wrap(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("ATLAS_CRASH_ONCE_DIR") or os.environ.get("ATLAS_TRIAL_DELAY_S"):
    sys.meta_path.insert(0, WrapOnImport())
