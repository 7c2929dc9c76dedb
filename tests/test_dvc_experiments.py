"""Experiments are comparable: the metric and plot files DVC reads are committed with git
(``cache: false`` and not git-ignored), so ``dvc exp show``, ``dvc metrics diff`` and
``dvc plots diff`` read them per experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")


def _report_files() -> dict[str, dict]:
    """Every metrics/plots file of dvc.yaml under reports/ -> its declaration."""
    doc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    found: dict[str, dict] = {}
    for stage in doc["stages"].values():
        for key in ("metrics", "plots", "outs"):
            for entry in stage.get(key) or []:
                path, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                if path.startswith("reports/") and (key != "outs" or path.endswith((".csv", ".json"))):
                    found[path] = {"kind": key, **(opts or {})}
    for plot in doc.get("plots") or []:
        for spec in plot.values():
            for path in (spec.get("y") or {}):
                found.setdefault(path, {"kind": "plots"})
    return found


def test_every_metric_and_plot_file_is_committed_not_ignored():
    files = _report_files()
    metrics = [p for p, o in files.items() if o["kind"] == "metrics"]
    assert "reports/metrics.json" in metrics and "reports/push.json" in metrics
    assert "reports/plots/roc.csv" in files and "reports/train/auc_steps.csv" in files
    for path, opts in files.items():
        if opts["kind"] == "outs" and path not in ("reports/plots/roc.csv", "reports/train/auc_steps.csv"):
            continue   # other report outputs (html, details) may stay out of git
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT).returncode == 0
        assert not ignored, f"{path} is git-ignored: DVC cannot read it per experiment"
        assert opts.get("cache") is False, f"{path} must be cache: false (git holds it, not the DVC cache)"


STEP = """
import json, pathlib, yaml
scale = yaml.safe_load(open("params.yaml"))["evaluate"]["scale"]
pathlib.Path("reports/plots").mkdir(parents=True, exist_ok=True)
pathlib.Path("reports/train").mkdir(parents=True, exist_ok=True)
json.dump({"auc": 0.8 * scale, "passed": scale > 0.95}, open("reports/metrics.json", "w"))
json.dump({"pushed": scale > 0.95}, open("reports/push.json", "w"))
with open("reports/plots/roc.csv", "w") as f:
    f.write("fpr,tpr,threshold\\n0,0,1\\n0.5,%f,0.5\\n1,1,0\\n" % (0.5 * scale + 0.3))
with open("reports/train/auc_steps.csv", "w") as f:
    f.write("step,auc\\n1,0.6\\n2,%f\\n" % (0.8 * scale))
pathlib.Path("reports/drift.html").write_text("<html/>")
"""


def _run(args: list, cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{args}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out.stdout


@pytest.mark.slow
def test_two_experiments_are_compared(tmp_path):
    """A project with this repo's .gitignore and its report declarations (dvc.yaml's, the
    commands replaced by a small step whose numbers follow a param) runs two experiments."""
    shutil.copyfile(REPO_ROOT / ".gitignore", tmp_path / ".gitignore")
    (tmp_path / "step.py").write_text(STEP)
    (tmp_path / "params.yaml").write_text("evaluate:\n  scale: 1.0\n")
    files = _report_files()
    outs = [{p: {"cache": False}} for p, o in files.items() if o["kind"] in ("outs", "plots")
            and p.endswith(".csv")]
    metrics = [{p: {"cache": False}} for p in ("reports/metrics.json", "reports/push.json")]
    real = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({
        "stages": {"evaluate": {"cmd": f"{sys.executable} step.py", "deps": ["step.py"], "params": ["evaluate"],
                                "outs": outs, "metrics": metrics}},
        "plots": real["plots"]}, sort_keys=False))
    _run(["git", "init", "-q"], tmp_path)
    _run([DVC, "init", "-q"], tmp_path)
    _run([DVC, "repro", "-q"], tmp_path)
    _run(["git", "add", "-A"], tmp_path)
    _run(["git", "commit", "-qm", "baseline"], tmp_path)
    tracked = _run(["git", "ls-files", "reports"], tmp_path).split()
    assert "reports/metrics.json" in tracked and "reports/drift.html" not in tracked
    _run([DVC, "exp", "run", "-q", "-n", "exp-a", "-S", "evaluate.scale=0.9"], tmp_path)
    _run([DVC, "exp", "run", "-q", "-n", "exp-b", "-S", "evaluate.scale=1.1"], tmp_path)

    shown = json.loads(_run([DVC, "exp", "show", "--json"], tmp_path))
    aucs = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                m = rev["data"]["metrics"]["reports/metrics.json"]["data"]
                aucs[rev["name"]] = m["auc"]
    assert aucs == {"exp-a": pytest.approx(0.72), "exp-b": pytest.approx(0.88)}

    diff = json.loads(_run([DVC, "metrics", "diff", "exp-a", "exp-b", "--json"], tmp_path))
    auc = diff["reports/metrics.json"]["auc"]
    assert auc["old"] == pytest.approx(0.72) and auc["new"] == pytest.approx(0.88)
    assert auc["diff"] == pytest.approx(0.16)

    plots = json.loads(_run([DVC, "plots", "diff", "exp-a", "exp-b", "--json"], tmp_path))
    assert not plots.get("errors"), plots["errors"]
    for name in ("ROC on the test window", "Validation AUC over training steps"):
        (plot,) = [v for k, v in plots["data"].items() if name in k]
        revisions = {r for item in plot for r in item.get("revisions") or []}
        assert revisions == {"exp-a", "exp-b"}, plot
