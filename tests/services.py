"""Real services for the tests, on 127.0.0.1: started, waited for, and always stopped.

A service that cannot start (binary missing, port taken, crash) fails the test with its log's last
lines instead of hanging; the process group is terminated (then killed) when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return requests.get(url, timeout=2).ok
        except requests.RequestException:
            return False

    return check


def require(binary: str, hint: str) -> str:
    """The path of `binary`, or a test failure that says how to install it."""
    found = shutil.which(binary) or (binary if Path(binary).is_file() else None)
    if not found:
        pytest.fail(f"{binary} is not installed: {hint}")
    return found


@contextlib.contextmanager
def service(
    name: str,
    cmd: list[str],
    ready: Callable[[], bool],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> Iterator[subprocess.Popen]:
    """Run `cmd` until the block ends; yields once `ready()` is true."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        try:
            proc = subprocess.Popen(
                cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )
        except OSError as err:
            pytest.fail(f"{name} could not start ({err})")
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode}: {log.read_text()[-2500:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} did not become ready within {timeout:.0f} s: {log.read_text()[-2500:]}")
                time.sleep(0.5)
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Terminate the process and its children (its own session); kill what is left after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
