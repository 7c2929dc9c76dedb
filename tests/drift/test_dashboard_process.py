"""`robeflow monitor --dashboard` ends its UI child when it is stopped (no orphan left listening)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PARENT = """
import sys
from pathlib import Path
from drift.workspace import serve_dashboard
child = [sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(300)",
         sys.argv[2]]
sys.exit(serve_dashboard(Path(sys.argv[1]), 0, command=child, grace_s=5))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (its parent has not reaped it yet)
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_ui_child_ends_with_the_dashboard_command(tmp_path, sig):
    workspace, pidfile = tmp_path / "workspace", tmp_path / "child.pid"
    workspace.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(workspace), str(pidfile)], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()):
            assert parent.poll() is None, parent.stderr.read()
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.1)
        child = int(pidfile.read_text())
        assert _alive(child)
        parent.send_signal(sig)
        assert parent.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the UI child outlived the dashboard command"
        assert "Evidently UI stopped" in parent.stderr.read()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
