"""`dvc repro` end to end in a temporary copy of the repo, on tiny data."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# Tiny data: the whole chain in about a minute on 2 cores.
TINY = {
    "generate": {"rows": 4000, "users": 300, "items": 200},
    "train": {"epochs": 1, "batch_size": 256, "eval_every": 0, "checkpoint_every": 0, "progress": False},
}

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "FEAST_USAGE": "False",
                "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"})
    return env


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _copy_project(dest: Path) -> None:
    """The project's files as a fresh clone would have them (tracked + new, not ignored)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _set_params(repo: Path, updates: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        node = params.setdefault(section, {})
        for key, value in values.items():
            node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("robeflow-copy")
    _copy_project(repo)
    (repo / "dvc.lock").unlink(missing_ok=True)
    _set_params(repo, TINY)
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "copy"], repo)
    _run(["dvc", "repro"], repo)
    return repo


def test_repro_runs_the_whole_chain(repo):
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for name in ("generate", "ingest", "validate", "features", "train", "evaluate"):
        assert name in stages
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(stages) == set(lock), "every stage ran and was recorded"
    validation = yaml.safe_load((repo / "reports/validation/validation.json").read_text())
    assert validation["rows_in"] == validation["rows_valid"] + validation["rows_quarantined"]
    metrics = yaml.safe_load((repo / "reports/metrics.json").read_text())
    assert {"auc", "logloss", "ne", "target_auc", "passed", "compression"} <= set(metrics)


def test_second_repro_does_nothing(repo):
    out = _run(["dvc", "repro"], repo)
    assert "Running stage" not in out
    assert "up to date" in out


def test_param_change_reruns_only_dependants(repo):
    _set_params(repo, {"evaluate": {"oracle_gap": 0.5}})
    out = _run(["dvc", "repro"], repo)
    assert "Running stage 'evaluate'" in out
    for upstream in ("generate", "ingest", "validate", "features", "train"):
        assert f"Running stage '{upstream}'" not in out


def test_metrics_show_lists_the_evaluation(repo):
    out = _run(["dvc", "metrics", "show"], repo)
    assert "reports/metrics.json" in out and "auc" in out
