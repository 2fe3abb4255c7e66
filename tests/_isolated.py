"""Run a command that starts worker processes (``mp.spawn``, ``torchrun``) so that a hang ends
the test, not the suite: the command runs in its own session; on a timeout every process of
that session gets SIGABRT first (Python processes started with ``-X faulthandler`` print their
stacks, which are returned), then SIGKILL, so no worker is left running behind the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_isolated(
    command: Sequence[str],
    *,
    timeout: float,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int | None, str, str]:
    """(return code, stdout, stderr) of ``command``; the return code is ``None`` when it ran
    past ``timeout`` seconds and was stopped (stdout/stderr then hold what it printed,
    stacks included)."""
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=None if env is None else dict(env),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)  # faulthandler: every Python process prints its stack
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        with contextlib.suppress(ProcessLookupError):  # workers that outlived the command
            os.killpg(proc.pid, signal.SIGKILL)
        return None, out, err
