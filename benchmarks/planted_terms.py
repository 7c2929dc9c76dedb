"""What each planted term of the generated shop is worth: the oracle AUC with and without it.

The world of ``params.yaml``'s ``generate`` section (``-S generate.KEY=VALUE`` overrides) is
simulated in memory, chunk by chunk as ``robeflow generate`` does (no files written). The
oracle scores every row with its planted logit; dropping a term scores the same rows, with
the same labels, by the logit without that term. The drop is what a model that cannot
learn the term loses at best. Figures on all rows and on the last ``--test-days`` days (the
default test window), with a bootstrap 95% interval of the drop on the test window.

    .venv/bin/python benchmarks/planted_terms.py                      # the default world
    .venv/bin/python benchmarks/planted_terms.py -S generate.rows=200000 --out benchmarks/results/planted_terms.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from contract.params import load_config
from dlrm.metrics import auc, paired_auc_difference
from generator.config import GenerateConfig
from generator.events import TERMS, build_world, simulate_chunk, warm_history


def planted_table(cfg: GenerateConfig, test_days: int, n_boot: int = 200) -> tuple[list[dict], dict]:
    """One row per term (its share of rows, spread, oracle AUC without it) and run facts."""
    t0 = time.perf_counter()
    world = build_world(cfg)
    history = warm_history(cfg, world)
    draws = [simulate_chunk(cfg, world, c, history) for c in range(-(-cfg.rows // cfg.chunk_rows))]
    seconds = time.perf_counter() - t0
    y = np.concatenate([d.label for d in draws])
    day = np.concatenate([d.ev["day"] for d in draws])
    terms = {k: np.concatenate([d.terms[k] for d in draws]) for k in TERMS}
    z = sum(terms.values())
    test = day >= cfg.days - test_days
    facts = {"rows": int(y.size), "positives": int(y.sum()), "test_rows": int(test.sum()),
             "test_positives": int(y[test].sum()), "oracle_auc": auc(y, z), "test_oracle_auc": auc(y[test], z[test]),
             "simulate_s": seconds}
    rows = []
    for name in TERMS:
        without = z - terms[name]
        diff = paired_auc_difference(y[test], z[test], without[test], n_boot=n_boot)
        rows.append({"term": name, "active_share": float((terms[name] != 0).mean()), "std": float(terms[name].std()),
                     "auc_without": auc(y, without), "drop": facts["oracle_auc"] - auc(y, without),
                     "test_auc_without": auc(y[test], without[test]), "test_drop": diff["diff"],
                     "test_drop_lo": diff["lo"], "test_drop_hi": diff["hi"]})
    return rows, facts


def markdown(rows: list[dict], facts: dict) -> str:
    out = [f"Oracle AUC {facts['oracle_auc']:.4f} on all {facts['rows']:,} rows ({facts['positives']:,} purchases); "
           f"{facts['test_oracle_auc']:.4f} on the test window ({facts['test_rows']:,} rows, "
           f"{facts['test_positives']:,} purchases).", "",
           "| term | rows where active | std of term (logit) | oracle AUC without | drop | test-window drop [95% CI] |",
           "|---|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: -r["drop"]):
        out.append(f"| `{r['term']}` | {r['active_share']:.1%} | {r['std']:.3f} | {r['auc_without']:.4f} | "
                   f"{r['drop']:.4f} | {r['test_drop']:.4f} [{r['test_drop_lo']:.4f}, {r['test_drop_hi']:.4f}] |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("-S", dest="overrides", action="append", default=[], help="generate.KEY=VALUE")
    p.add_argument("--test-days", type=int, default=3, help="the test window (features.test_days)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of each drop's interval")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = p.parse_args()
    cfg = load_config(GenerateConfig, "generate", args.params, args.overrides)
    rows, facts = planted_table(cfg, args.test_days, args.n_boot)
    print(f"generate: rows={cfg.rows} users={cfg.users} items={cfg.items} days={cfg.days} "
          f"base_rate={cfg.base_rate} seed={cfg.seed}; simulated in {facts['simulate_s']:.1f}s")
    text = markdown(rows, facts)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
