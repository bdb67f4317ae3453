"""Finding and stopping the processes a test started: every one carries an environment marker
(Ray and MLflow pass their environment on to the processes they start)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def marked_pids(key: str, value: str) -> list[int]:
    """Processes whose environment has key=value (ours: /proc/PID/environ is readable)."""
    needle = f"{key}={value}".encode()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in env:
            out.append(int(name))
    return out


def kill_marked(key: str, value: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = marked_pids(key, value)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.3)
    raise AssertionError(f"processes with {key}={value} still alive: {marked_pids(key, value)}")
