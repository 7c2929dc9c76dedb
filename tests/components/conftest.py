"""Fixtures for the data steps: a small seeded generated dataset, ingested and validated once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.generate import GenerateConfig, GenerateResult, generate
from components.ingest import IngestConfig, ingest
from components.validate import ValidateConfig, ValidateResult, validate

SMALL = dict(rows=3000, users=300, items=200, days=7, chunk_rows=1000, corrupt_fraction=0.02,
             start_date="2026-10-05")


def small_config(**overrides) -> GenerateConfig:
    """A generator config of a few thousand rows (every corruption kind several times)."""
    return GenerateConfig(**{**SMALL, **overrides})


def validate_config(gen: GenerateConfig, **overrides) -> ValidateConfig:
    start, end = gen.window
    return ValidateConfig(**{"window_start": start.isoformat(), "window_end": end.isoformat(), **overrides})


@dataclass
class Run:
    gen: GenerateConfig
    generated: GenerateResult
    validated: ValidateResult
    raw: Path
    truth: Path
    ingested: Path
    out: Path
    quarantine: Path
    reports: Path


def run_chain(root: Path, gen: GenerateConfig, **validate_overrides) -> Run:
    """generate -> ingest -> validate under ``root``."""
    paths = {k: root / k for k in ("raw", "truth", "ingested", "out", "quarantine", "reports")}
    generated = generate(gen, paths["raw"], paths["truth"])
    ingest(IngestConfig(), paths["raw"], paths["ingested"])
    validated = validate(validate_config(gen, **validate_overrides), paths["ingested"], paths["out"],
                         paths["quarantine"], paths["reports"])
    return Run(gen=gen, generated=generated, validated=validated, **paths)


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Run:
    """The small default dataset, generated, ingested and validated once per session."""
    return run_chain(tmp_path_factory.mktemp("chain"), small_config())


def clean_frame(n: int = 12, start: str = "2026-10-05") -> pd.DataFrame:
    """``n`` valid canonical rows spread over two days (raw form: ISO-text timestamps)."""
    ts = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(np.arange(n) * 3 * 3600, unit="s")
    return pd.DataFrame({
        "event_id": [f"e{k}" for k in range(n)],
        "event_timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "user_id": [f"u{k % 3}" for k in range(n)],
        "item_id": [f"i{k % 4}" for k in range(n)],
        "query": ["men's shampoo" if k % 2 else "" for k in range(n)],
        "category_l1": "beauty", "category_l2": "hair care", "category_l3": "men's shampoo",
        "brand": "Lumora",
        "price": np.linspace(1.0, 30.0, n),
        "position": pd.array(np.arange(n) % 5 + 1, dtype="Int64"),
        "device": "mobile", "country": "DE",
        "purchased": pd.array(np.arange(n) % 2, dtype="Int64"),
    })


@pytest.fixture
def frame() -> pd.DataFrame:
    return clean_frame()


# Test modules cannot import this conftest (importlib import mode): the helpers are
# handed out as fixtures.
@pytest.fixture
def make_config():
    return small_config


@pytest.fixture
def make_chain():
    return run_chain


@pytest.fixture
def make_frame():
    return clean_frame


@pytest.fixture
def make_vconfig():
    return validate_config


def train_args(root: Path, out: str, *extra: str) -> list[str]:
    """`robeflow train` arguments for a project dir holding data/model_input and params.yaml;
    the outputs go under ``root / out``."""
    return ["train", "--input", str(root / "data/model_input"), "--model-out", str(root / out / "model"),
            "--checkpoints", str(root / out / "checkpoints"), "--reports", str(root / out / "reports"),
            "--params", str(root / "params.yaml"), *extra]


def train_metrics(root: Path, out: str) -> dict:
    """The train_metrics.json of the run that wrote under ``root / out``."""
    return json.loads((root / out / "reports/train_metrics.json").read_text())
