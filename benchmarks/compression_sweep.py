"""The quality table: test AUC against embedding compression for full tables, the hashing
trick, QR embeddings and ROBE, each model at its best epoch, with bootstrap intervals and
paired differences to full tables on the same test rows.

Reads a model-ready dir (``data/model_input``: train/valid/test parquet + feature_spec.json,
written by ``robeflow features``) and, when present, the planted probabilities
(``data/truth``) for the oracle AUC. Model and optimizer settings come from the ``train``
section of params.yaml; the sweep sets the backend, the compression, the seed and the
budget. Every run evaluates the whole validation window every ``--eval-every`` steps, keeps
the weights of its best validation AUC and stops ``--patience`` evaluations after it
(``train.patience``), so no point of the table is an overfitted last epoch.

For each configuration and seed the test window is scored once; all score vectors are
then bootstrapped on the same stratified resamples of the test rows, so that

- ``AUC [95% CI]`` is the mean over seeds with the interval of that mean over resamples
  (the spread over test rows; ``seed sd`` is the spread over seeds), and
- ``AUC - full [95% CI]`` is the mean over seeds of (config - full tables of the same seed),
  paired: an interval that excludes 0 is a difference larger than the test window's noise.

``--no-id`` adds the full-table model trained and tested with the ``--id-features`` set to
one constant id (what the model learns without ids: the rest of the features only).

``--criteo PATH`` runs the same sweep on Criteo-format data instead (a TSV/CSV file or a
folder of parts, e.g. ``robeflow generate --format criteo``), where nothing but the ids and
a few counts describe an offer. The rows are in time order; the latest ``--test-fraction``
form the test window and the same share before it the validation window. Each categorical
feature's table holds one row per value seen in the training rows plus one for values it
never saw, so full tables are exact (no hash collisions) and every compression is measured
against the rows training actually used. ``--truth`` is read in the files' row order (as
the generator writes it) for the oracle.

    .venv/bin/python benchmarks/compression_sweep.py                       # 3 seeds, every row
    .venv/bin/python benchmarks/compression_sweep.py --rows 100000 --seeds 0 --no-id
    .venv/bin/python benchmarks/compression_sweep.py --backends robe --compressions 1000
    .venv/bin/python benchmarks/compression_sweep.py --criteo data/criteo --truth data/criteo_truth \
        --no-id --id-features C1,C2

Writes ``<out>/compression_sweep.{md,json,png}`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from contract.model_input import read_frame, read_spec
from contract.params import load_config
from contract.spec import FeatureSpec, ModelInput
from dlrm.bundle import predict
from dlrm.configs import TrainConfig
from dlrm.metrics import auc, bootstrap_auc_samples
from dlrm.train import train_model


def oracle_auc(frame: pd.DataFrame, labels: np.ndarray, truth_dir: Path) -> float | None:
    """AUC of the planted probabilities on the rows of ``frame`` (None without truth files)."""
    files = sorted(Path(truth_dir).rglob("*.parquet")) if truth_dir.exists() else []
    if not files or "event_id" not in frame.columns:
        return None
    truth = pd.concat([pd.read_parquet(f, columns=["event_id", "purchase_prob"]) for f in files])
    prob = frame["event_id"].astype(str).map(truth.drop_duplicates("event_id").set_index("event_id")
                                             ["purchase_prob"].rename(index=str)).to_numpy(np.float64)
    known = ~np.isnan(prob)
    return auc(labels[known], prob[known]) if known.any() else None


def criteo_world(path: Path, truth_dir: Path, test_fraction: float
                 ) -> tuple[FeatureSpec, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], float | None]:
    """Criteo rows in time order -> (spec, (train, valid, test) model-ready frames, the
    oracle AUC of the test rows or None): the latest ``test_fraction`` of the rows test, the
    share before them validation; categorical ids from the training rows' vocabulary (0: a
    value training never saw)."""
    from dlrm.stream import criteo_files
    from features.criteo import CAT_COLUMNS, criteo_model_frame, criteo_spec, read_criteo

    if not 0 < test_fraction < 0.5:
        raise ValueError(f"--test-fraction = {test_fraction}; expected 0 < x < 0.5")
    raw = pd.concat([read_criteo(f) for f in criteo_files(path)], ignore_index=True)
    n = len(raw)
    n_test = max(1, round(n * test_fraction))
    cut_valid, cut_test = n - 2 * n_test, n - n_test
    if cut_valid < 1:
        raise ValueError(f"{path}: {n} rows are too few for a test and a validation share of {test_fraction}")
    frame, _ = criteo_model_frame(raw, 1)      # label and dense columns; ids replaced below
    sizes = []
    for c in CAT_COLUMNS:
        values = raw[c].fillna("").to_numpy(dtype=object)
        vocab = pd.Index(pd.unique(values[:cut_valid]))
        frame[c] = vocab.get_indexer(values).astype(np.int64) + 1      # -1 (unseen) -> 0
        sizes.append(len(vocab) + 1)
    spec = criteo_spec(sizes)
    parts = (frame.iloc[:cut_valid], frame.iloc[cut_valid:cut_test], frame.iloc[cut_test:])
    parts = tuple(p.reset_index(drop=True) for p in parts)
    oracle = None
    truth_files = sorted(Path(truth_dir).glob("*.parquet")) if Path(truth_dir).is_dir() else []
    if truth_files:
        prob = pd.concat([pd.read_parquet(f, columns=["purchase_prob"]) for f in truth_files],
                         ignore_index=True)["purchase_prob"].to_numpy(np.float64)
        if len(prob) != n:
            raise ValueError(f"{truth_dir} holds {len(prob)} truth rows for {n} Criteo rows")
        oracle = auc(parts[2]["label"].to_numpy(np.float64), prob[cut_test:])
    return spec, parts, oracle


def without_ids(frame: pd.DataFrame, spec: FeatureSpec, id_features: list[str]) -> ModelInput:
    """The rows with every ``id_features`` column set to one constant id."""
    names = {f.name for f in spec.sparse}
    missing = [n for n in id_features if n not in names]
    if missing:
        raise ValueError(f"--id-features {missing} are not sparse features of the spec ({sorted(names)})")
    frame = frame.copy()
    for n in id_features:
        frame[n] = 0
    return ModelInput.from_frame(frame, spec)


def run_one(base: TrainConfig, backend: str, compression: float, seed: int, spec: FeatureSpec,
            train: ModelInput, valid: ModelInput, test: ModelInput) -> tuple[dict, np.ndarray]:
    """Trains one configuration; (its figures, its test scores)."""
    emb = replace(base.model.embedding, backend=backend, compression=compression, size=0, seed=seed)
    cfg = replace(base, model=replace(base.model, embedding=emb), seed=seed)
    t0 = time.perf_counter()
    result = train_model(cfg, spec, train, valid)
    wall = time.perf_counter() - t0
    scores = predict(result.model, test)
    m = result.metrics()
    return {
        "backend": backend, "nominal_compression": compression, "seed": seed,
        "compression": m["compression"], "compression_vs_used_rows": m["compression_vs_used_rows"],
        "embedding_bytes": m["embedding_bytes"], "best_step": m["best_step"], "steps": m["steps"],
        "best_valid_auc": m["best_valid_auc"], "test_auc": auc(test.labels, scores),
        "train_samples_per_s": m["train_samples_per_s"], "wall_s": wall,
    }, scores


def summarise(runs: list[dict], scores: list[np.ndarray], labels: np.ndarray, n_boot: int) -> list[dict]:
    """One row per configuration: mean test AUC over seeds with its bootstrap interval, and
    the paired difference to full tables of the same seeds."""
    boots = bootstrap_auc_samples(labels, scores, n_boot=n_boot, seed=0)  # (runs, n_boot)
    full = {r["seed"]: k for k, r in enumerate(runs) if r["config"] == "full"}
    rows = []
    for config in dict.fromkeys(r["config"] for r in runs):
        ks = [k for k, r in enumerate(runs) if r["config"] == config]
        first = runs[ks[0]]
        aucs = np.array([runs[k]["test_auc"] for k in ks])
        mean_boot = boots[ks].mean(axis=0)  # (n_boot,)
        row = {
            "config": config, "backend": first["backend"], "nominal_compression": first["nominal_compression"],
            "compression": first["compression"],
            "compression_vs_used_rows": float(np.mean([runs[k]["compression_vs_used_rows"] or np.nan for k in ks])),
            "embedding_bytes": first["embedding_bytes"], "seeds": [runs[k]["seed"] for k in ks],
            "best_steps": [runs[k]["best_step"] for k in ks], "steps": [runs[k]["steps"] for k in ks],
            "test_auc": float(aucs.mean()), "seed_sd": float(aucs.std(ddof=1)) if len(ks) > 1 else None,
            "auc_lo": float(np.quantile(mean_boot, 0.025)), "auc_hi": float(np.quantile(mean_boot, 0.975)),
            "train_samples_per_s": float(np.mean([runs[k]["train_samples_per_s"] for k in ks])),
        }
        paired = [(k, full[runs[k]["seed"]]) for k in ks if runs[k]["seed"] in full]
        if config != "full" and paired:
            d = np.mean([runs[a]["test_auc"] - runs[b]["test_auc"] for a, b in paired])
            d_boot = np.mean([boots[a] - boots[b] for a, b in paired], axis=0)
            row.update(diff_full=float(d), diff_lo=float(np.quantile(d_boot, 0.025)),
                       diff_hi=float(np.quantile(d_boot, 0.975)))
        rows.append(row)
    return rows


def markdown(rows: list[dict], facts: dict) -> str:
    lines = [f"# {facts['title']}", "",
             f"test window: {facts['test_rows']:,} rows, {facts['test_positives']:,} positives"
             + (f"; oracle (planted) AUC {facts['oracle_auc']:.4f}" if facts.get("oracle_auc") else ""), "",
             "| config | nominal | compression | vs rows used | embedding bytes | best step (per seed) "
             "| test AUC [95% CI] | seed sd | AUC - full [95% paired CI] | samples/s |",
             "|---|---:|---:|---:|---:|---|---|---:|---|---:|"]
    for r in rows:
        diff = (f"{r['diff_full']:+.4f} [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}]" if "diff_full" in r else "")
        sd = f"{r['seed_sd']:.4f}" if r["seed_sd"] is not None else ""
        used = r["compression_vs_used_rows"]
        lines.append(
            f"| {r['config']} | {r['nominal_compression']:g}x | {r['compression']:.1f}x | "
            f"{'' if not np.isfinite(used) else f'{used:.3g}x'} | {r['embedding_bytes']:,} | "
            f"{', '.join(str(s) for s in r['best_steps'])} of {', '.join(str(s) for s in r['steps'])} | "
            f"{r['test_auc']:.4f} [{r['auc_lo']:.4f}, {r['auc_hi']:.4f}] | {sd} | {diff} | "
            f"{r['train_samples_per_s']:,.0f} |")
    lines += ["", *(f"skipped: {k}" for k in facts.get("skipped", []))] if facts.get("skipped") else []
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], facts: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for backend in dict.fromkeys(r["backend"] for r in rows if r["backend"] != "full"):
        pts = sorted((r["embedding_bytes"], r["test_auc"], r["auc_lo"], r["auc_hi"])
                     for r in rows if r["backend"] == backend)
        x, y, lo, hi = map(np.array, zip(*pts))
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=backend)
    for r in rows:
        if r["backend"] == "full":
            style = ("k", "--") if r["config"] == "full" else ("0.5", "-.")
            ax.axhline(r["test_auc"], color=style[0], ls=style[1], lw=1,
                       label=f"{r['config']} ({r['embedding_bytes'] / 2**20:.1f} MiB)")
            ax.axhspan(r["auc_lo"], r["auc_hi"], color=style[0], alpha=0.08)
    if facts.get("oracle_auc"):
        ax.axhline(facts["oracle_auc"], color="g", ls=":", lw=1, label="oracle (planted)")
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes")
    ax.set_ylabel("test AUC (best epoch, mean over seeds, 95% CI)")
    ax.set_title(facts["title"], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=Path("data/model_input"))
    p.add_argument("--truth", type=Path, default=Path("data/truth"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--criteo", type=Path, default=None,
                   help="Criteo-format data (file or folder of parts, rows in time order) instead of --input")
    p.add_argument("--test-fraction", type=float, default=3 / 42,
                   help="--criteo: the latest share of rows tested, the same share before it validated")
    p.add_argument("--rows", type=int, default=0, help="training rows used, the latest ones (0 = all)")
    p.add_argument("--epochs", type=int, default=4, help="at most this many epochs (early stopping ends most runs sooner)")
    p.add_argument("--eval-every", type=int, default=0, help="steps between validation AUCs (0 = 4 per epoch)")
    p.add_argument("--patience", type=int, default=3, help="evaluations without a better validation AUC before stopping")
    p.add_argument("--backends", default="hashing,qr,robe")
    p.add_argument("--compressions", default="10,100,1000,10000")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--no-id", action="store_true", help="also train full tables without the id features")
    p.add_argument("--id-features", default="user,item", help="the sparse features --no-id makes constant")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a shared box)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.criteo is not None:
        spec, (train_frame, valid_frame, test_frame), oracle = criteo_world(args.criteo, args.truth,
                                                                            args.test_fraction)
    else:
        spec = read_spec(args.input)
        train_frame, valid_frame, test_frame = (read_frame(args.input, s) for s in ("train", "valid", "test"))
    if args.rows and args.rows < len(train_frame):
        train_frame = train_frame.iloc[-args.rows:].reset_index(drop=True)
    train, valid, test = (ModelInput.from_frame(f, spec) for f in (train_frame, valid_frame, test_frame))
    steps_per_epoch = -(-train.num_rows // load_config(TrainConfig, "train", args.params).batch_size)
    base = replace(load_config(TrainConfig, "train", args.params), epochs=args.epochs,
                   eval_every=args.eval_every or max(steps_per_epoch // 4, 1), eval_rows=0,
                   patience=args.patience, target_auc=None, checkpoint_every=0, progress=False, device="cpu")
    labels = test.labels.astype(np.float64)
    if args.criteo is None:
        oracle = oracle_auc(test_frame, labels, args.truth)
    seeds = [int(s) for s in args.seeds.split(",")]
    title = ((f"Criteo-format {args.criteo.name}: " if args.criteo is not None else "")
             + f"{train.num_rows:,} train rows, <= {args.epochs} epochs, eval every {base.eval_every} steps, "
             f"patience {args.patience}, batch {base.batch_size}, dim {base.model.embedding.dim}, "
             f"ROBE Z={base.model.embedding.block}, seeds {args.seeds}")
    facts = {"title": title, "train_rows": train.num_rows, "test_rows": test.num_rows,
             "test_positives": int(labels.sum()), "oracle_auc": oracle, "n_boot": args.n_boot,
             "params": str(args.params), "input": str(args.criteo or args.input)}
    print(f"# {title}; test {test.num_rows:,} rows, {int(labels.sum()):,} positives"
          + (f"; oracle AUC {oracle:.5f}" if oracle else ""), flush=True)

    plan = [("full", "full", 1.0, False)]
    if args.no_id:
        plan.append(("full, no ids", "full", 1.0, True))
    plan += [(f"{b} {c:g}x", b, c, False) for b in args.backends.split(",") if b
             for c in (float(x) for x in args.compressions.split(",") if x)]
    id_free = None
    if args.no_id:
        ids = [s for s in args.id_features.split(",") if s]
        id_free = tuple(without_ids(f, spec, ids) for f in (train_frame, valid_frame, test_frame))
    runs, scores = [], []
    for seed in seeds:
        for config, backend, comp, no_id in plan:
            tr, va, te = id_free if no_id else (train, valid, test)
            try:
                r, s = run_one(base, backend, comp, seed, spec, tr, va, te)
            except ValueError as err:   # a setting these tables cannot have (a ROBE array below its block)
                facts.setdefault("skipped", []).append(f"{config}, seed {seed}: {err}")
                print(json.dumps({"config": config, "seed": seed, "skipped": str(err)}), flush=True)
                continue
            runs.append({"config": config, **r})
            scores.append(s)
            print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in runs[-1].items()}),
                  flush=True)
    rows = summarise(runs, scores, labels, args.n_boot)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, facts)
    (args.out / "compression_sweep.md").write_text(text)
    (args.out / "compression_sweep.json").write_text(json.dumps({"facts": facts, "table": rows, "runs": runs},
                                                                indent=1, default=float))
    plot(rows, facts, args.out / "compression_sweep.png")
    print(text)


if __name__ == "__main__":
    main()
