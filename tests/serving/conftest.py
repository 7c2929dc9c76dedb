"""Fixtures of the serving tests: a tiny materialised feature store, a pushed model, a server.

The store is built once per session by the real features step on ~1,500 seeded
transactions; the model is a small ROBE DLRM with fixed random weights (serving does not
care how good it is), pushed to a registry with ``robeflow push``'s core.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from contract.schema import COLUMNS, COUNTRIES, DEVICES

REPO_ROOT = Path(__file__).resolve().parents[2]
TERMS = ("shampoo", "men", "red", "kids", "gift", "organic")


def make_events(rows: int = 1500, users: int = 40, items: int = 30, days: int = 8, seed: int = 0) -> pd.DataFrame:
    """Transactions in the canonical schema, sorted by time."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, items, rows)
    l1 = np.array(("beauty", "garden", "books"))[item % 3]
    ts = pd.Timestamp("2026-10-01", tz="UTC") + pd.to_timedelta(rng.uniform(0, days * 86400, rows), unit="s")
    df = pd.DataFrame({
        "event_id": [f"e{i:05d}" for i in range(rows)],
        "event_timestamp": ts,
        "user_id": [f"u{u}" for u in rng.integers(0, users, rows)],
        "item_id": [f"i{i}" for i in item],
        "query": [" ".join(rng.choice(TERMS, k)) for k in rng.integers(0, 3, rows)],
        "category_l1": l1,
        "category_l2": np.char.add(l1, (item % 4).astype(str)),
        "category_l3": np.char.add(l1, (item % 6).astype(str)),
        "brand": [f"b{i % 5}" for i in item],
        "price": np.round(5 + (item * 3.7) % 90, 2),
        "position": rng.integers(1, 30, rows),
        "device": rng.choice(DEVICES, rows),
        "country": rng.choice(COUNTRIES, rows),
        "purchased": (rng.random(rows) < 0.1 + 0.1 * (item % 3 == 0)).astype(int),
    }).astype(COLUMNS)
    return df.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def write_validated(events: pd.DataFrame, root: Path) -> None:
    day = events["event_timestamp"].dt.strftime("%Y-%m-%d")
    for d, part in events.groupby(day, sort=True):
        out = root / f"day={d}"
        out.mkdir(parents=True, exist_ok=True)
        part.reset_index(drop=True).to_parquet(out / "part-0.parquet", index=False)


def push_random_model(spec, model_dir: Path, registry: Path, seed: int = 0) -> str:
    """Saves a small ROBE DLRM with random weights for ``spec`` and pushes it; returns the version."""
    import torch

    from components.push import PushConfig, push, sha256_file
    from dlrm.bundle import WEIGHTS, save_model
    from dlrm.configs import EmbeddingConfig, ModelConfig
    from dlrm.model import DLRM

    torch.manual_seed(seed)
    cfg = ModelConfig(embedding=EmbeddingConfig(backend="robe", dim=8, compression=1000, block=8, seed=seed),
                      bottom_mlp=(16,), top_mlp=(16,))
    model = DLRM(cfg, len(spec.dense), spec.table_sizes)
    save_model(model, model_dir, spec=spec, config={"seed": seed})
    metrics = model_dir.parent / f"metrics-{seed}.json"
    metrics.write_text(json.dumps({"auc": 0.8, "target_auc": 0.7, "gate": "target_auc", "passed": True,
                                   "model_sha256": sha256_file(model_dir / WEIGHTS)}))
    # random weights: serving does not care how good a model is, so the gates are overridden
    result = push(PushConfig(force=True), model_dir, metrics, registry=str(registry))
    assert result.pushed
    return result.version


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """A materialised feature repo and a registry whose production model uses its spec.

    Namespace: ``events``, ``repo``, ``spec``, ``registry`` (paths), ``snapshot``.
    """
    from components.features import FeaturesConfig, features
    from contract.spec import FeatureSpec

    root = tmp_path_factory.mktemp("serving")
    events = make_events()
    write_validated(events, root / "validated")
    result = features(FeaturesConfig(test_days=1, valid_days=1), root / "validated", root / "features",
                      root / "model_input")
    spec = FeatureSpec.load(root / "model_input" / "feature_spec.json")
    push_random_model(spec, root / "models" / "model", root / "registry")
    return SimpleNamespace(events=events, repo=root / "features", spec=spec, registry=root / "registry",
                           snapshot=pd.Timestamp(result.snapshot), root=root)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(site, registry: Path, workdir: Path, params: str = "", env: dict[str, str] | None = None):
    """``robeflow serve`` in a subprocess on a free loopback port, ready; stopped on exit.

    Yields a namespace: ``url`` (http://127.0.0.1:PORT), ``proc``, ``log`` (path of its output).
    """
    import httpx

    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    (workdir / "params.yaml").write_text(params or "serve: {}\n")
    full_env = {**os.environ, "FEAST_USAGE": "False", "DO_NOT_TRACK": "1", "PYTHONPATH": str(REPO_ROOT),
                **(env or {})}
    cmd = [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())",
           "serve", "--registry", str(registry), "--features", str(site.repo),
           "--port", str(port), "--params", str(workdir / "params.yaml")]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v2/models/robeflow/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, proc=proc, log=log_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(site, tmp_path_factory):
    """``robeflow serve`` on the site's registry (loopback, default host; no reloads).

    Namespace: ``url`` (http://127.0.0.1:PORT), ``proc``, ``log`` (path of its output).
    """
    params = "serve:\n  max_candidates: 50\n  reload_s: 0\n"
    with running_server(site, site.registry, tmp_path_factory.mktemp("server"), params) as srv:
        yield srv


@pytest.fixture(scope="session")
def ranker(site):
    """The in-process Ranker on the same registry and store (for comparing with HTTP answers)."""
    from serving.config import ServeConfig
    from serving.predictor import RobeflowModel

    model = RobeflowModel(ServeConfig(), site.registry, site.repo)
    model.load()
    return model.ranker


@pytest.fixture(scope="session")
def tower_model(site):
    """``tower_model(heads)``: a small seeded DLRM with the history tower on the site's spec."""
    def make(heads: int = 1):
        import torch

        from dlrm.configs import EmbeddingConfig, HistoryConfig, ModelConfig
        from dlrm.model import DLRM, history_inputs

        torch.manual_seed(0)
        cfg = ModelConfig(embedding=EmbeddingConfig(backend="robe", dim=8, compression=1000, block=8),
                          bottom_mlp=(16,), top_mlp=(16,), history=HistoryConfig(depth=1, heads=heads, ff_mult=2))
        return DLRM(cfg, len(site.spec.dense), site.spec.table_sizes, history=history_inputs(cfg, site.spec)).eval()

    return make
