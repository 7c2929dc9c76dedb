"""The Evidently workspace of the monitor: one snapshot per run, the project dashboard,
and Evidently's UI over it (``robeflow monitor --dashboard``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from contract.io import StepError, log

PREDICTION = "prediction"  # the column holding the model's purchase probability
# the retrieval model's metrics on the test window (reports/retrieval_metrics.json) and the
# columns of the monitored current window that carry them into the snapshot (one value each)
RETRIEVAL_KEYS = ("recall_at_10", "recall_at_100", "p_at_1", "oracle_recall_at_100")
RETRIEVAL_COLUMNS = {key: f"retrieval_{key}" for key in RETRIEVAL_KEYS}


def dashboard_panels() -> list:
    """The project dashboard: drift share, prediction mean and quality over runs, and the
    retrieval model's Recall@10/@100 and P@1 beside the oracle's Recall@100."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel

    share = PanelMetric(metric="DriftedColumnsCount", metric_labels={"value_type": "share"},
                        legend="share of drifted features")
    pred_mean = PanelMetric(metric="MeanValue", metric_labels={"column": PREDICTION},
                            legend="mean purchase probability")
    # no counter of the drift share: the UI shows "no value" when the last value is 0
    return [
        counter_panel("ROC AUC (last run)", [PanelMetric(metric="RocAuc", legend="AUC")], size="half"),
        counter_panel("Prediction mean (last run)", [pred_mean], size="half"),
        line_plot_panel("Share of drifted features", [share],
                        description="DataDriftPreset over the model inputs; drift at >= monitor.max_drift_share"),
        line_plot_panel("Prediction mean", [pred_mean], size="half"),
        line_plot_panel("ROC AUC", [PanelMetric(metric="RocAuc", legend="AUC")], size="half"),
        line_plot_panel("Log loss", [PanelMetric(metric="LogLoss", legend="log loss")], size="half"),
        line_plot_panel("Purchase rate", [PanelMetric(metric="MeanValue", metric_labels={"column": "purchased"},
                                                      legend="share purchased")], size="half"),
        counter_panel("Retrieval Recall@100 (last run)",
                      [PanelMetric(metric="MeanValue", metric_labels={"column": RETRIEVAL_COLUMNS["recall_at_100"]},
                                   legend="Recall@100")], size="half"),
        line_plot_panel("Retrieval", [
            PanelMetric(metric="MeanValue", metric_labels={"column": RETRIEVAL_COLUMNS[key]}, legend=legend)
            for key, legend in (("recall_at_10", "Recall@10"), ("recall_at_100", "Recall@100"),
                                ("p_at_1", "P@1"), ("oracle_recall_at_100", "oracle Recall@100"))],
            description="the retrieval model on the test window: the purchased item among all items "
                        "(reports/retrieval_metrics.json)", size="half"),
    ]


def open_project(workspace: Path, name: str):
    """(workspace, project): the project called ``name``, created with its dashboard if absent."""
    from evidently.ui.workspace import Workspace

    workspace.mkdir(parents=True, exist_ok=True)
    ws = Workspace(str(workspace))
    found = ws.search_project(name)
    if len(found) > 1:
        raise StepError(f"the workspace {workspace} holds {len(found)} projects named {name!r}; expected one")
    if found:
        project = found[0]
        # a workspace made before a panel existed gets it (panels are matched by title)
        have = {p.title for p in project.dashboard.model().panels}
        missing = [p for p in dashboard_panels() if p.title not in have]
        for panel in missing:
            project.dashboard.add_panel(panel, tab="Monitoring")
        if missing:
            project.save()
        return ws, project
    project = ws.create_project(name, description="robeflow drift monitoring: one snapshot per monitor run")
    for panel in dashboard_panels():
        project.dashboard.add_panel(panel, tab="Monitoring")
    project.save()
    return ws, project


def add_run(workspace: Path, project_name: str, snapshot) -> str:
    """Adds ``snapshot`` to the workspace project; returns its snapshot id."""
    ws, project = open_project(Path(workspace), project_name)
    ref = ws.add_run(project.id, snapshot, include_data=False)
    return str(ref.id)


def list_runs(workspace: Path, project_name: str) -> list[str]:
    """The snapshot ids of the project's runs ([] when the workspace or project does not exist)."""
    from evidently.ui.workspace import Workspace

    if not Path(workspace).is_dir():
        return []
    ws = Workspace(str(workspace))
    found = ws.search_project(project_name)
    return [str(s) for p in found for s in ws.list_runs(p.id)]


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """Ends ``proc``: SIGTERM, then SIGKILL after ``grace_s`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_dashboard(workspace: Path, port: int = 8000, *, command: list[str] | None = None,
                    grace_s: float = 10.0) -> int:
    """Serves Evidently's UI over ``workspace`` on 127.0.0.1:``port`` until interrupted.

    The UI runs as a child process that ends with this one: SIGTERM or SIGINT here
    is passed on to it (SIGKILL after ``grace_s`` seconds), and any other way out of
    this function ends it too, so no UI is left listening.

    Args:
        workspace: the Evidently workspace dir (``robeflow monitor`` writes it).
        port: port of the UI on 127.0.0.1.
        command: the child's command line (default: ``evidently ui`` of this interpreter).
        grace_s: seconds the child has to exit after SIGTERM.
    """
    if not Path(workspace).is_dir():
        raise FileNotFoundError(f"workspace {workspace} does not exist; run `robeflow monitor` first")
    log("monitor", f"Evidently UI over {workspace} at http://127.0.0.1:{port} (Ctrl-C stops it)")
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    # `evidently ui` of the running interpreter's environment, bound to loopback only
    cmd = command or [sys.executable, "-m", "evidently.cli", "ui", "--workspace", str(workspace),
                      "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env)
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        if proc.poll() is None:
            proc.terminate()   # only signal here; the loop below waits (and kills after grace_s)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if received:
                    _stop(proc, grace_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(proc, grace_s)   # an exception on the way out ends the child as well
    if received or code < 0:   # stopped by a signal: the way a server ends
        log("monitor", f"Evidently UI stopped (signal {received[0] if received else -code})")
        return 0
    if code != 0:
        raise StepError(f"the Evidently UI over {workspace} exited with status {code} "
                        f"(is port {port} in use?)")
    return 0
