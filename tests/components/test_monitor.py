"""`robeflow monitor`: drift is flagged on shifted data and named right, unshifted data stays
quiet, the summary agrees with the HTML report, and the workspace gains a snapshot per run.

Model-ready windows are built in memory from the generator (no Feast repo): 40 days, so the
current and reference windows lie past the 30-day warm-up of the history features. The
shifted data has ``drift_days == test_days``: the shift covers exactly the current window.
Three Evidently runs in all (each takes seconds: Evidently renders plots for every column).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main
from components.features import TableSizes
from generator.config import GenerateConfig
from generator.events import build_world, generate_chunk
from contract.params import as_dict
from contract.schema import COLUMNS

# a world without repeat purchases or hidden user tastes (item_taste 0.54 = the item's own
# taste at 0.6 of its category's), at a 3% base rate
GEN = dict(rows=45_000, users=2_000, items=500, days=40, drift_days=3, corrupt_fraction=0.0,
           chunk_rows=45_000, base_rate=0.03, item_taste=0.54, user_taste=0.0, replenish=0.0)
SPLIT = dict(test_days=3, valid_days=3)
TABLES = TableSizes(user=20_000, item=5_000, query=5_000, category_l1=100, category_l2=500,
                    category_l3=2_000, brand=2_000, fav_category_l1=100)
SEED = 11
PARAMS = {
    "train": {
        "model": {"embedding": {"backend": "robe", "dim": 8, "compression": 4, "block": 4},
                  "bottom_mlp": [16], "top_mlp": [16]},
        "batch_size": 512, "epochs": 1, "progress": False,
    },
    "monitor": {"max_rows": 4_000, "seed": 0},
}

# The generator's drift moves category_l1/l2/l3 (and the query), item and brand popularity,
# prices and so purchases (components/generate.py). Features computed from those columns:
MAY_DRIFT = {
    "category_l1", "category_l2", "category_l3", "query", "fav_category_l1", "item", "brand",
    "price", "price_band",
    "item_offers_7d", "item_purchases_7d", "item_purchase_rate_7d",
    "item_offers_30d", "item_purchases_30d", "item_purchase_rate_30d",
    "user_purchases_7d", "user_purchases_30d", "user_purchase_rate_30d",
    "user_avg_price_paid_30d", "user_days_since_purchase",
    # the user's statistics in the item's category: a shifted category mix moves them
    "ucat_l1_offers_7d", "ucat_l1_purchases_7d", "ucat_l1_offers_30d", "ucat_l1_purchases_30d",
    "ucat_l1_purchase_rate_30d", "ucat_l2_offers_7d", "ucat_l2_purchases_7d", "ucat_l2_offers_30d",
    "ucat_l2_purchases_30d", "ucat_l2_purchase_rate_30d",
}
# ...and the direct shifts, which a drift of 0.8 must show.
MUST_DRIFT = {"price", "category_l1", "item"}


def write_windows(root: Path, seed: int, drift: float) -> Path:
    """Generated transactions -> model-ready train/valid/test + feature_spec.json under ``root``."""
    from features.windows import model_ready_windows
    from features.compute import StatsParams
    from features.transform import feature_spec

    cfg = GenerateConfig(**GEN, seed=seed, drift=drift)
    events, _ = generate_chunk(cfg, build_world(cfg), 0)
    stats = StatsParams()
    spec = feature_spec(as_dict(TABLES), stats)
    windows = model_ready_windows(events.astype(COLUMNS), spec, stats, **SPLIT)
    root.mkdir(parents=True)
    for name, frame in windows.items():
        frame.to_parquet(root / f"{name}.parquet", index=False)
    spec.save(root / "feature_spec.json")
    return root


def outputs(root: Path, out: str) -> tuple[dict, dict]:
    """(drift.json, drift_details.json) of a run."""
    return tuple(json.loads((root / out / name).read_text()) for name in ("drift.json", "drift_details.json"))


def run_cli(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Shifted and unshifted data of one world, a model trained on the unshifted training window,
    and params.yaml."""
    root = tmp_path_factory.mktemp("monitor")
    write_windows(root / "steady", SEED, 0.0)
    write_windows(root / "drifted", SEED, 0.8)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    assert main(["train", "--input", str(root / "steady"), "--model-out", str(root / "model"),
                 "--checkpoints", str(root / "checkpoints"), "--reports", str(root / "train_reports"),
                 "--params", str(root / "params.yaml")]) == 0
    return root


def monitor_args(root: Path, data: str, out: str, *overrides: str, model: list[str] | None = None) -> list[str]:
    args = ["monitor", "--input", str(root / data), *(model or ["--model", str(root / "model")]),
            "--html", str(root / out / "drift.html"), "--summary", str(root / out / "drift.json"),
            "--details", str(root / out / "drift_details.json"),
            "--report-json", str(root / out / "drift_report.json"),
            "--workspace", str(root / "workspace"), "--params", str(root / "params.yaml")]
    for o in overrides:
        args += ["-S", o]
    return args


@pytest.fixture(scope="module")
def drifted(project):
    """The monitor on the shifted data, with fail_on_drift: (exit code, stdout, summary, details)."""
    code, out = run_cli(monitor_args(project, "drifted", "out_drifted", "monitor.fail_on_drift=true"))
    return (code, out, *outputs(project, "out_drifted"))


@pytest.fixture(scope="module")
def steady(project, drifted):
    """The monitor on the unshifted data of the same world, into the same workspace (after
    ``drifted``), with the model taken from a registry's production pointer."""
    from drift.workspace import list_runs
    from model_registry.registry import Registry

    registry = Registry(project / "registry")
    registry.set_production(registry.publish(project / "model"))
    before = list_runs(project / "workspace", "robeflow")
    (project / "retrieval_metrics.json").write_text(json.dumps(RETRIEVAL))
    code, out = run_cli(monitor_args(project, "steady", "out_steady", "monitor.fail_on_drift=true",
                                     model=["--registry", str(project / "registry"),
                                            "--retrieval-metrics", str(project / "retrieval_metrics.json")]))
    return (code, out, *outputs(project, "out_steady"), before)


def test_shifted_data_is_flagged_and_the_step_alerts(drifted):
    code, out, s, _ = drifted
    assert s["drift_detected"] is True
    assert s["drift_share"] >= s["max_drift_share"]
    assert code == 4                      # fail_on_drift: the exit code a schedule alerts on
    assert "DRIFT DETECTED" in out and str(Path("out_drifted/drift.html")) in out


def test_drifted_features_are_the_ones_the_generator_shifted(drifted):
    _, _, s, x = drifted
    named = set(s["drifted_features"])
    assert MUST_DRIFT <= named, f"missed {MUST_DRIFT - named}"
    assert named <= MAY_DRIFT, f"flagged unshifted {named - MAY_DRIFT}"
    assert s["drifted_count"] == len(named) == sum(f["drifted"] for f in x["features"].values())
    assert s["drift_share"] == pytest.approx(len(named) / s["features_tested"])
    assert s["features_tested"] == len(x["features"])
    # the id features are tested through popularity buckets, the rest by type
    assert x["features"]["item"]["kind"] == "popularity_bucket"
    assert x["features"]["user"]["kind"] == "popularity_bucket"
    assert x["features"]["device"]["kind"] == "categorical"
    assert x["features"]["price"]["kind"] == "numerical"
    assert x["excluded_features"] == ["day_of_week"] and "day_of_week" not in x["features"]


def test_predictions_shift_with_the_data_and_quality_is_reported(drifted, steady):
    _, _, ds, d, *_ = drifted
    _, _, qs, q, _ = steady
    for s, x in ((ds, d), (qs, q)):
        assert 0 < x["prediction"]["mean_current"] < 1 and 0 < x["prediction"]["mean_reference"] < 1
        assert s["prediction_mean"] == x["prediction"]["mean_current"]
        assert s["prediction_drift"] == x["prediction"]["drifted"]
        assert x["quality"]["current"]["rows"] == x["windows"]["current"]["sampled"]
        assert 0.5 < x["quality"]["reference"]["auc"] <= 1 and s["auc_reference"] == x["quality"]["reference"]["auc"]
        assert s["auc"] == x["quality"]["current"]["auc"] and s["logloss"] > 0
        days = [b["day"] for b in x["quality"]["by_day"]]
        assert len(days) == SPLIT["test_days"] and days == sorted(days)
        assert sum(b["rows"] for b in x["quality"]["by_day"]) == x["quality"]["current"]["rows"]
        assert x["target"]["method"] and x["target"]["rate_current"] > 0 and s["target_drift"] is not None
    # dearer, differently popular items: the model's scores move more on shifted data
    assert d["prediction"]["score"] > q["prediction"]["score"]


def test_unshifted_data_is_not_flagged(steady):
    code, out, s, _, _ = steady
    assert s["drift_detected"] is False and code == 0
    assert s["drift_share"] < s["max_drift_share"]
    assert "no drift" in out
    assert s["model"].endswith("production (v1)")   # scored by the registry's production bundle


def test_unshifted_data_of_another_seed_is_not_flagged(tmp_path):
    from components.monitor import MonitorConfig, monitor

    data = write_windows(tmp_path / "steady2", SEED + 1, 0.0)
    result = monitor(MonitorConfig(max_rows=4_000), data, None, tmp_path / "d.html", tmp_path / "d.json")
    assert result.drift_detected is False
    assert result.details["prediction"] is None and result.details["quality"] is None  # no model given
    assert result.summary["prediction_drift"] is None and result.summary["auc"] is None
    assert json.loads((tmp_path / "d.json").read_text())["drift_share"] == result.summary["drift_share"]


RETRIEVAL = {"recall_at_10": 0.125, "recall_at_100": 0.375, "p_at_1": 0.0625, "oracle_recall_at_100": 0.5,
             "items": 5000, "method": "lsh"}


def test_retrieval_metrics_join_the_summary_the_snapshot_and_the_dashboard(project, drifted, steady):
    from drift.workspace import open_project

    code, out, s, x, _ = steady
    assert {k: s[f"retrieval_{k}"] for k in RETRIEVAL} == RETRIEVAL
    assert "Recall@100 0.3750 (oracle 0.5000)" in out
    assert "retrieval_recall_at_100" not in drifted[2]              # a run without them has none
    assert "retrieval_recall_at_100" not in x["features"]           # not a tested feature
    snap = json.loads((project / "out_steady/drift_report.json").read_text())
    means = {m["config"]["column"]: m["value"] for m in snap["metrics"]
             if m["config"]["type"].endswith(":MeanValue")}
    assert {k: means[f"retrieval_{k}"] for k in ("recall_at_10", "recall_at_100", "p_at_1",
                                                 "oracle_recall_at_100")} == pytest.approx(
        {k: RETRIEVAL[k] for k in ("recall_at_10", "recall_at_100", "p_at_1", "oracle_recall_at_100")})
    _, proj = open_project(project / "workspace", "robeflow")
    assert {"Retrieval", "Retrieval Recall@100 (last run)"} <= {p.title for p in proj.dashboard.model().panels}


@pytest.mark.parametrize("doc, message", [
    ({"recall_at_10": 0.1, "recall_at_100": 0.2, "p_at_1": 0.0}, r"lack \['oracle_recall_at_100'\]"),
    ({"recall_at_10": 0.1, "recall_at_100": 2.0, "p_at_1": 0.0, "oracle_recall_at_100": 0.3},
     r"recall_at_100 = 2\.0; expected a number in \[0, 1\]"),
    ([0.1], "expected a JSON object"),
])
def test_bad_retrieval_metrics_are_refused_naming_the_key(tmp_path, doc, message):
    from components.monitor import read_retrieval_metrics

    path = tmp_path / "retrieval_metrics.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        read_retrieval_metrics(path)


def test_summary_matches_the_html_and_json_reports(project, drifted):
    _, _, s, x = drifted
    html = (project / "out_drifted/drift.html").read_text()
    m = re.search(r"Drift is detected for [\d.]+% of columns \((\d+) out of (\d+)\)", html)
    assert m, "the HTML report has no dataset drift line"
    assert (int(m.group(1)), int(m.group(2))) == (s["drifted_count"], s["features_tested"])
    verdict = re.search(r"Dataset Drift is (NOT )?detected", html)
    assert verdict and (verdict.group(1) is None) == s["drift_detected"]
    full = json.loads((project / "out_drifted/drift_report.json").read_text())
    counts = [m["value"] for m in full["metrics"] if m["config"]["type"].endswith(":DriftedColumnsCount")]
    assert counts == [{"count": float(s["drifted_count"]), "share": pytest.approx(s["drift_share"])}]
    for t in full["tests"]:
        col = t["metric_config"]["params"].get("column")
        if t["id"] == "drift" and col in x["features"]:
            assert (t["status"] == "FAIL") == x["features"][col]["drifted"], col


def test_workspace_gains_one_snapshot_per_run_and_has_the_dashboard(project, steady):
    from drift.workspace import list_runs, open_project

    _, _, s, x, before = steady
    after = list_runs(project / "workspace", "robeflow")
    assert len(before) == 1 and len(after) == 2 and set(before) < set(after)
    assert s["snapshot_id"] == x["workspace"]["snapshot_id"] and s["snapshot_id"] in set(after) - set(before)
    _, proj = open_project(project / "workspace", "robeflow")   # found again, not created twice
    assert len(list_runs(project / "workspace", "robeflow")) == 2
    titles = [p.title for p in proj.dashboard.model().panels]
    assert {"Share of drifted features", "Prediction mean", "ROC AUC"} <= set(titles)


def test_dashboard_serves_the_workspace_on_loopback(project, steady):
    """`robeflow monitor --dashboard` starts Evidently's UI over the workspace on 127.0.0.1."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    robeflow = Path(sys.executable).with_name("robeflow")
    proc = subprocess.Popen([str(robeflow), "monitor", "--dashboard", "--workspace", str(project / "workspace"),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "DO_NOT_TRACK": "1"})
    try:
        projects, deadline = None, time.monotonic() + 120
        while projects is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/projects", timeout=2) as r:
                    projects = json.loads(r.read())
            except OSError:
                time.sleep(1)
        assert projects is not None, f"the UI did not answer: exit {proc.poll()}"
        assert [p["name"] for p in projects] == ["robeflow"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)     # the CLI and the UI process it started
        proc.wait(timeout=30)


def test_windows_are_sampled_from_row_groups_as_from_whole_frames(project, tmp_path):
    """The monitor reads the windows a row group at a time (a 100M-event reference does not
    fit in memory): the same seed gives exactly the tables of sampling the whole frames in
    memory, here with the reference spread over two files of many row groups; the ranking
    rows are capped by ``monitor.max_ranking_rows``."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.monitor import MonitorConfig, _sample_windows
    from contract.model_input import read_frame, read_spec
    from drift.columns import monitored_tables, tables_from_sample

    src, data = project / "steady", tmp_path / "data"
    data.mkdir()
    for name in ("train", "valid", "test"):
        pq.write_table(pa.Table.from_pandas(read_frame(src, name), preserve_index=False), data / f"{name}.parquet",
                       row_group_size=997)
    (data / "feature_spec.json").write_text((src / "feature_spec.json").read_text())
    spec = read_spec(data)
    reference = pd.concat([read_frame(src, "train"), read_frame(src, "valid")], ignore_index=True)
    current = read_frame(src, "test")
    for cap in (None, 5_000):
        cfg = MonitorConfig(reference="train+valid", max_rows=3_000, max_ranking_rows=cap or 10**9)
        kwargs = dict(max_categories=cfg.max_categories, exclude=tuple(cfg.exclude),
                      min_category_rows=cfg.min_category_rows)
        want = monitored_tables(reference, current, spec, max_rows=cfg.max_rows, rng=np.random.default_rng(7),
                                max_ranking_rows=cap, **kwargs)
        sample, ref_info, cur_info = _sample_windows(data, cfg, spec, np.random.default_rng(7))
        got = tables_from_sample(sample, spec, **kwargs)
        assert len(sample.ranking_rows) == (cap or len(reference) - 3_000)
        assert list(sample.ranking_rows.columns) == [f.name for f in spec.sparse if f.name not in cfg.exclude]
        for a, b in zip((got[0], got[1], got[3], got[4]), (want[0], want[1], want[3], want[4])):
            pd.testing.assert_frame_equal(a, b)
        assert got[2] == want[2] and spec.label in got[0].columns
        assert ref_info["rows"] == len(reference) and cur_info["rows"] == len(current)
        ts = pd.to_datetime(current["event_timestamp"], utc=True)
        assert cur_info["days"] == [ts.min().strftime("%Y-%m-%d"), ts.max().strftime("%Y-%m-%d")]
