"""What a group of dense features is worth: the same model trained with and without it.

Reads a model-ready dir (``data/model_input``) and trains, for each ``--backends`` entry
(``full`` or ``<backend>:<compression>``) and seed, the ``train`` section's model twice on
the same rows: with every feature, and with the dense features whose names start with
``--drop`` removed from the spec. Each run keeps its best validation AUC (early stopping
as in the compression sweep); the test window is scored once per run and the difference
gets a paired bootstrap interval on the same resamples of the test rows.

    .venv/bin/python benchmarks/feature_ablation.py --drop ucat_ --backends full,robe:1000 --seeds 0
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compression_sweep import oracle_auc, run_one  # noqa: E402
from contract.model_input import read_frame, read_spec  # noqa: E402
from contract.params import load_config  # noqa: E402
from contract.spec import ModelInput  # noqa: E402
from dlrm.configs import TrainConfig  # noqa: E402
from dlrm.metrics import bootstrap_auc_samples  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=Path("data/model_input"))
    p.add_argument("--truth", type=Path, default=Path("data/truth"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--drop", required=True, help="prefix of the dense features left out (e.g. ucat_)")
    p.add_argument("--backends", default="full,robe:1000", help="full or <backend>:<compression>, comma-separated")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    spec = read_spec(args.input)
    dropped = [f.name for f in spec.dense if f.name.startswith(args.drop)]
    if not dropped:
        raise SystemExit(f"no dense feature of {args.input} starts with {args.drop!r}: "
                         f"{[f.name for f in spec.dense]}")
    less = replace(spec, dense=tuple(f for f in spec.dense if not f.name.startswith(args.drop)))
    frames = [read_frame(args.input, s) for s in ("train", "valid", "test")]
    data = {"with": [ModelInput.from_frame(f, spec) for f in frames],
            "without": [ModelInput.from_frame(f, less) for f in frames]}
    test = data["with"][2]
    labels = test.labels.astype(np.float64)
    cfg = load_config(TrainConfig, "train", args.params)
    steps = -(-data["with"][0].num_rows // cfg.batch_size)
    base = replace(cfg, epochs=args.epochs, eval_every=max(steps // 4, 1), eval_rows=0, patience=args.patience,
                   target_auc=None, checkpoint_every=0, progress=False, device="cpu")
    oracle = oracle_auc(frames[2], labels, args.truth)
    print(f"# {len(dropped)} dense features dropped: {', '.join(dropped)}")
    print(f"# train {data['with'][0].num_rows:,} rows; test {test.num_rows:,} rows, {int(labels.sum()):,} "
          f"positives" + (f"; oracle AUC {oracle:.4f}" if oracle else ""), flush=True)
    print("| model | seed | test AUC with | without | with - without [95% paired CI] | best steps |")
    print("|---|---:|---:|---:|---|---|")
    for entry in args.backends.split(","):
        backend, _, comp = entry.partition(":")
        for seed in (int(s) for s in args.seeds.split(",")):
            runs = {k: run_one(base, backend, float(comp or 1), seed, spec if k == "with" else less, *data[k])
                    for k in ("with", "without")}
            boots = bootstrap_auc_samples(labels, [runs["with"][1], runs["without"][1]], n_boot=args.n_boot, seed=0)
            d = boots[0] - boots[1]
            a, b = runs["with"][0], runs["without"][0]
            print(f"| {entry} | {seed} | {a['test_auc']:.4f} | {b['test_auc']:.4f} | "
                  f"{a['test_auc'] - b['test_auc']:+.4f} [{np.quantile(d, 0.025):+.4f}, {np.quantile(d, 0.975):+.4f}] | "
                  f"{a['best_step']}/{a['steps']}, {b['best_step']}/{b['steps']} |", flush=True)


if __name__ == "__main__":
    main()
