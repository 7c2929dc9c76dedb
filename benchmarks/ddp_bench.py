"""Data-parallel training throughput: `robeflow train` with 1 worker against N workers, in
the same run, on the same data and the same samples (the same global batches).

The data is model-ready and shaped like the pipeline's (params.yaml ``features.tables``:
14 sparse features incl. the multi-hot query bag, 10 dense features), with a planted
logistic signal on user, item, category and query ids and the dense features, so the
validation AUC means something. The model and optimizers are params.yaml's ``train``
section (ROBE 1000x, dim 16, batch 1024), one torch thread per worker.

    .venv/bin/python benchmarks/ddp_bench.py                       # 300k rows, 1 vs 2 workers
    .venv/bin/python benchmarks/ddp_bench.py --rows 600000 --repeats 2 --workers 1 2
    .venv/bin/python benchmarks/ddp_bench.py -S train.embedding.size=25000000   # a 100 MB array
    .venv/bin/python benchmarks/ddp_bench.py --kaggle-mlp     # the Criteo-Kaggle MLPs (more work a row)

Each configuration trains ``--repeats`` times, interleaved (1, 2, 1, 2, ...), so load from
other processes hits both alike; samples/s is training steps only (rank 0's clock, which
waits for the other ranks every step), the figure `robeflow train` reports. Prints samples/s,
the whole-window validation AUC of each, and the ratios against 1 worker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from components.train import train
from contract.model_input import write_model_input
from contract.params import load_config
from contract.spec import DenseFeature, FeatureSpec, SparseFeature
from dlrm.configs import TrainConfig

TABLES = {"user": 500000, "item": 200000, "query": 200000, "category_l1": 1000, "category_l2": 5000,
          "category_l3": 20000, "brand": 20000, "price_band": 64, "fav_category_l1": 1000, "device": 64,
          "country": 256, "position": 64, "hour": 64, "day_of_week": 16}
DENSE = 10


def bench_spec() -> FeatureSpec:
    return FeatureSpec(dense=tuple(DenseFeature(f"d{i}") for i in range(DENSE)),
                       sparse=tuple(SparseFeature(n, s, multi_hot=n == "query") for n, s in TABLES.items()))


def planted(n: int, seed: int, users: int = 20000, items: int = 5000) -> pd.DataFrame:
    """n model-ready rows: Zipf-active users and popular items, categories and query terms
    tied to the item, a planted logit on them and on the dense features (~5% positives)."""
    world = np.random.default_rng(7)
    w_user, w_item, w_term = world.normal(0, 1.0, users), world.normal(0, 1.0, items), world.normal(0, 0.7, 2000)
    item_cat = world.integers(0, 20000, items)
    item_terms = world.integers(0, 2000, (items, 3))
    w_dense = world.normal(0, 0.4, DENSE)
    rng = np.random.default_rng(seed)
    user = np.minimum(rng.zipf(1.4, n), users) - 1
    item = np.minimum(rng.zipf(1.2, n), items) - 1
    dense = rng.normal(0, 1, (n, DENSE)).astype(np.float32)
    k = rng.integers(0, 4, n)
    terms = [item_terms[i, :j] for i, j in zip(item, k)]
    logit = (w_user[user] + w_item[item] + np.array([w_term[t].sum() for t in terms]) + dense @ w_dense - 3.3)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    h = lambda x, size: ((x.astype(np.int64) * 2654435761) % size).astype(np.int64)  # noqa: E731
    cat = item_cat[item]
    frame = {"event_id": [f"e{seed}-{i}" for i in range(n)],
             "event_timestamp": pd.Timestamp("2026-10-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="s"),
             **{f"d{i}": dense[:, i] for i in range(DENSE)},
             "user": h(user, TABLES["user"]), "item": h(item, TABLES["item"]),
             "query": [h(t, TABLES["query"]) for t in terms],
             "category_l1": h(cat // 400, 1000), "category_l2": h(cat // 20, 5000),
             "category_l3": h(cat, 20000), "brand": h(item // 3, 20000)}
    for name in ("price_band", "fav_category_l1", "device", "country", "position", "hour", "day_of_week"):
        frame[name] = rng.integers(0, min(TABLES[name], 50), n).astype(np.int64)
    frame["purchased"] = label
    return pd.DataFrame(frame)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=300000, help="training rows")
    p.add_argument("--valid-rows", type=int, default=50000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=1, help="runs per worker count, interleaved")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("-S", dest="overrides", action="append", default=[], help="train.KEY=VALUE")
    p.add_argument("--kaggle-mlp", action="store_true",
                   help="bottom MLP 512-256-64, top 512-256 (the DLRM Criteo-Kaggle widths) instead of params.yaml's")
    args = p.parse_args()
    if args.kaggle_mlp:
        args.overrides = ["train.model.bottom_mlp=[512,256,64]", "train.model.top_mlp=[512,256]", *args.overrides]
    fixed = [f"train.epochs={args.epochs}", "train.eval_every=0", "train.threads=1", "train.progress=false",
             "train.checkpoint_every=0", "train.device=cpu", "train.target_auc=null", *args.overrides]
    base = load_config(TrainConfig, "train", args.params, fixed)
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        data = Path(tmp) / "model_input"
        data.mkdir()
        write_model_input(data, {"train": planted(args.rows, 1), "valid": planted(args.valid_rows, 2)}, bench_spec())
        print(f"# {args.rows} training rows, {args.valid_rows} validation rows, batch {base.batch_size}, "
              f"{args.epochs} epoch(s), {base.model.embedding.backend} embedding "
              f"(compression {base.model.embedding.compression:g}, size {base.model.embedding.size}), "
              f"MLPs {list(base.model.bottom_mlp)} / {list(base.model.top_mlp)}, 1 torch thread per worker, "
              f"{args.repeats} run(s) each, interleaved; {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.2f} before", flush=True)
        runs: dict[int, list[dict]] = {w: [] for w in args.workers}
        for rep in range(args.repeats):
            for w in args.workers:
                cfg = load_config(TrainConfig, "train", args.params, [*fixed, f"train.workers={w}"])
                out = Path(tmp) / f"run-{w}-{rep}"
                res = train(cfg, data, out / "model", out / "checkpoints", out / "reports")
                m = res.metrics
                runs[w].append(m)
                print(f"workers {w} run {rep}: {m['train_samples_per_s']:.0f} samples/s, train {m['train_s']:.1f} s, "
                      f"valid AUC {m['valid_auc']:.4f}, {m['embedding_bytes'] / 1e6:.3f} MB array", flush=True)
    one = statistics.median(r["train_samples_per_s"] for r in runs[args.workers[0]])
    auc_one = statistics.median(r["valid_auc"] for r in runs[args.workers[0]])
    print(f"# load average after: {os.getloadavg()[0]:.2f} (other processes share the cores)")
    print(f"{'workers':>8} {'samples/s':>12} {'speed-up':>9} {'valid AUC':>10} {'AUC - 1w':>9}")
    for w, rs in runs.items():
        sps = statistics.median(r["train_samples_per_s"] for r in rs)
        auc = statistics.median(r["valid_auc"] for r in rs)
        print(f"{w:>8} {sps:>12.0f} {sps / one:>8.2f}x {auc:>10.4f} {auc - auc_one:>+9.4f}")


if __name__ == "__main__":
    main()
