"""The Feast repo: the feast CLI works on a copy of features/ and on the materialised repo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import features
from features.compute import compute_feature_tables
from features.repo import check_tables_match_views, open_store, repo_objects

PACKAGE = Path(features.__file__).parent

# Runs feast CLI commands in ONE fresh interpreter (the `feast` console script's own entry,
# feast.cli.cli:cli, once per command), so Feast is imported once instead of per command.
FEAST_CLI = """
import sys
from feast.cli.cli import cli
for args in map(str.split, sys.argv[1:]):
    print("$ feast", *args, flush=True)
    cli.main(args, prog_name="feast", standalone_mode=False)
"""


def feast(*commands: str) -> str:
    """Output of the feast CLI commands (each a space-separated argument string)."""
    out = subprocess.run([sys.executable, "-c", FEAST_CLI, *commands], check=True,
                         capture_output=True, text=True)
    return out.stdout


def test_feast_cli_applies_a_copy_of_the_package_and_reads_the_materialised_repo(tmp_path, built):
    """`feast apply` in a copy of features/ (helpers excluded by .feastignore) registers the
    repo under the copy, not under the working directory; `feast ... list` reads both."""
    repo = tmp_path / "repo"
    shutil.copytree(PACKAGE, repo, ignore=shutil.ignore_patterns("__pycache__", "store"))
    out = feast(f"--chdir {repo} apply", f"--chdir {repo} feature-views list",
                f"--chdir {built.repo} feature-services list", f"--chdir {built.repo} entities list")
    assert (repo / "store" / "registry.db").is_file()
    copy_list = out[out.index(f"--chdir {repo} feature-views list"):out.index(f"--chdir {built.repo}")]
    for name in ("user_daily_stats", "item_daily_stats", "item_attributes", "user_history"):
        assert name in copy_list
    built_list = out[out.index(f"--chdir {built.repo} feature-services list"):]
    assert "dlrm_v1" in built_list and "user_history_v1" in built_list and "user_id" in built_list


def test_repo_objects_are_collected_once_and_unloaded(built):
    objects = repo_objects(built.repo)
    kinds = sorted(type(o).__name__ for o in objects)
    assert kinds == ["Entity", "Entity", "FeatureService", "FeatureService", *["FeatureView"] * 5,
                     *["FileSource"] * 5]
    assert not {"entities", "feature_views", "data_sources", "feature_services"} & set(sys.modules)


def test_tables_that_drift_from_the_views_are_refused(built, events):
    tables = compute_feature_tables(events)
    tables.item_attributes = tables.item_attributes.drop(columns="item_brand")
    with pytest.raises(ValueError, match="item_attributes"):
        check_tables_match_views(open_store(built.repo), tables)


def test_the_generated_repo_reads_its_tables_through_feasts_duckdb_offline_store(built):
    """feature_store.yaml names Feast's DuckDB offline store, and Feast loads it as such (the
    point-in-time join in test_step goes through it)."""
    import yaml
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig

    config = yaml.safe_load((built.repo / "feature_store.yaml").read_text())
    assert config["offline_store"] == {"type": "duckdb"}
    assert isinstance(open_store(built.repo).config.offline_store, DuckDBOfflineStoreConfig)


def test_feast_calls_run_in_the_repo_and_give_the_working_directory_back(built, events, tmp_path,
                                                                          monkeypatch):
    """Feast's DuckDB store opens source paths against the working directory; robeflow's
    calls find the repo's tables from anywhere, and leave the working directory as it was."""
    from features.repo import historical_rows

    monkeypatch.chdir(tmp_path)
    rows = historical_rows(open_store(built.repo), events.head(50)[["event_timestamp", "user_id", "item_id"]])
    assert Path.cwd() == tmp_path
    assert rows["user_offers_30d"].notna().all()


def test_a_directory_without_a_repo_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="feature_store.yaml"):
        open_store(tmp_path)


def test_a_spark_repo_names_feasts_spark_store_and_spark_sources(built, tmp_path):
    """``install_repo`` with the Spark config: the yaml names Feast's Spark offline store
    (master, UTC) and its Spark materialisation engine, the
    sources become SparkSources with the same relative paths, and the offline tables are
    written with microsecond timestamps (Spark reads no nanosecond ones), same instants."""
    import pyarrow.parquet as pq
    import yaml
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    from features.repo import OFFLINE_DIR, install_repo, repo_objects, spark_config, write_offline_batches

    repo = install_repo(tmp_path / "repo", spark_config("spark://host:7077", {"spark.executor.memory": "4g"}))
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert config["offline_store"]["type"] == "spark"
    assert config["offline_store"]["spark_conf"]["spark.master"] == "spark://host:7077"
    assert config["offline_store"]["spark_conf"]["spark.sql.session.timeZone"] == "UTC"
    assert config["offline_store"]["spark_conf"]["spark.executor.memory"] == "4g"
    assert config["batch_engine"] == {"type": "spark.engine"}   # Spark materialises too
    assert config["online_store"] == yaml.safe_load((built.repo / "feature_store.yaml").read_text())["online_store"]
    sources = [o for o in repo_objects(repo) if hasattr(o, "path") and hasattr(o, "timestamp_field")]
    assert len(sources) == 5 and all(isinstance(s, SparkSource) for s in sources)
    assert {s.path for s in sources} == {f"store/offline/{p.name}" for p in (built.repo / OFFLINE_DIR).glob("*.parquet")}
    src = built.repo / OFFLINE_DIR / "user_daily_stats.parquet"
    write_offline_batches("user_daily_stats", pq.ParquetFile(src).iter_batches(100), repo)
    got, want = pq.read_table(repo / OFFLINE_DIR / src.name), pq.read_table(src)
    assert got.schema.field("event_timestamp").type.unit == "us"
    assert got.column("event_timestamp").cast(want.schema.field("event_timestamp").type).equals(
        want.column("event_timestamp"))
    assert got.drop(["event_timestamp"]).equals(want.drop(["event_timestamp"]))
