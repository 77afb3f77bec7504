"""Ctrl-C for the CLI: the first SIGINT interrupts, later ones cannot cut the cleanup short, the exit is 130.

The cleanup is the code that a KeyboardInterrupt unwinds through: finished points written, the
parent run marked KILLED, Ray shut down. After it the process leaves with `os._exit`, skipping
the interpreter's teardown. That teardown runs while threads of Ray, gRPC or the MLflow client
may still be alive, and it can crash the process (`Segmentation fault`, exit 139).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, NoReturn

INTERRUPTED = 130


def _interrupt(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abort the cleanup half-way
    raise KeyboardInterrupt


def first_interrupt_only():
    """Install the handler; returns the previous one (to restore when the CLI runs inside another program)."""
    return signal.signal(signal.SIGINT, _interrupt)


@contextmanager
def shielded() -> Iterator[None]:
    """A block a Ctrl-C does not cut in half (a run's status write, a thread's join, Ray's shutdown): the interrupt
    is raised when the block ends, and later ones are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def later(signum, frame) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, later)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if caught else previous)
        if caught:
            raise KeyboardInterrupt


def leave(code: int = INTERRUPTED) -> NoReturn:
    """Flush and exit now, without the interpreter's teardown."""
    from orchestrator.supervise import note

    note(exit=code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
