"""`robeflow generate`: synthetic shop transactions with a planted purchase probability.

One row is one product offered to one user (schema in :mod:`contract.schema`). Every
row's purchase probability is planted by a known model and written beside the data
(``--truth``: ``event_id, purchase_prob``), never as a feature; its AUC is the best any
model can reach on the data (the "oracle AUC").

The planted model (logit of the purchase probability, summed per row; the names are
:data:`generator.events.TERMS`, ``benchmarks/planted_terms.py`` measures each one's worth):
  - ``category_taste``: latent user vectors (d=8) dotted with the item's category vector
    (hierarchy l1 > l2 > l3: beauty > hair care > men's shampoo); users also search and
    browse mostly in categories they like;
  - ``item_taste``: the same user vector dotted with the item's own deviation from its
    category (``item_taste`` weight): two items of one leaf please different users;
  - ``user_taste``: a second per-user vector that does not steer browsing, dotted with the
    item's full vector (``user_taste`` weight);
  - ``user_bias`` and ``item_quality`` (popular items tend to be the good ones);
  - ``price``: relative to the category's median price, scaled by the user's price
    sensitivity (doubled by a "cheap" query, halved by "premium");
  - ``position`` bias (-log position), ``query_match`` (same l3 / l2 / brand as the query),
    ``context``: hour-of-day, day-of-week, device and country effects;
  - ``repeat``: an item the user bought 20-60 days earlier is bought again more often if it
    is a consumable (grocery, beauty), less often if durable (books, electronics), weight
    ``replenish``; "buy again" offers show buyers their earlier purchases;
  - an intercept calibrated so the mean rate before repeats is ``base_rate``.
Users (``user_zipf``: heavy users have thousands of offers), items, brands (within an l1)
and query phrasings are drawn with Zipf-distributed popularity. Chunks are contiguous in
time and simulated day by day, so a purchase can lead to a repeat purchase weeks later.
All of it is learnable from the canonical columns plus per-user/per-item history, but
``item_taste``, ``user_taste`` and ``repeat`` only from the ids (or their joint history).

Drift (``drift`` in 0..1, applied to rows on the last ``drift_days`` days) shifts:
  - ``category_l1/l2/l3`` (and so ``query``): two l1 categories gain weight exp(2.5 * drift);
  - ``item_id``/``brand``: item popularity moves to a different Zipf ranking (share ``drift``);
  - ``price``: all prices are multiplied by 1 + 0.5 * drift;
  - ``purchased`` follows (dearer items sell less).
Other columns keep their distributions.

Corruption (``corrupt_fraction`` of rows, every kind in :data:`CORRUPTIONS` in turn):
nulls in key columns, negative prices, labels outside {0, 1}, unparseable timestamps,
timestamps outside the data window, unknown devices and countries, positions < 1, and
exact duplicates of another row (duplicate ``event_id``). The truth holds one row per
distinct event id (a duplicate's replaced row is dropped from it).

Raw layout (``--out``): ``part-NNNNN.parquet`` (or ``.csv``) per chunk of ``chunk_rows``,
canonical columns, ``event_timestamp`` as ISO-8601 text (``2026-10-03T14:22:05Z``) as raw
logs have it, plus ``_generate.json`` (parameters and counts). Timestamps are sorted
within a chunk, and chunks follow each other in time (chunk k's last day is at most
chunk k + 1's first). ``--format criteo`` writes ``part-NNNNN.tsv`` Criteo
files instead (see :func:`to_criteo`; no corruption), truth rows in the files' row order.
Output is deterministic for a given configuration (seed, sizes and ``chunk_rows``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from contract.io import StepError, atomic_dir, log, write_json
from contract.params import add_params_args, as_dict, load_config
from contract.schema import COLUMNS
from generator.config import GenerateConfig
from generator.corruption import CORRUPTIONS, corrupt
from generator.criteo import to_criteo
from generator.events import build_world, generate_chunk, warm_history


@dataclass
class GenerateResult:
    rows: int
    files: list[Path]
    truth_files: list[Path]
    positive_rate: float                   # share of purchased == 1 among generated labels
    mean_purchase_prob: float
    corrupted: dict[str, int] = field(default_factory=dict)  # kind -> rows
    window: tuple[str, str] = ("", "")     # [start, end) ISO dates
    seconds: float = 0.0


# ---------------------------------------------------------------------------- core


def generate(cfg: GenerateConfig, out_dir: Path, truth_dir: Path) -> GenerateResult:
    """Generates ``cfg.rows`` transactions into ``out_dir`` and their truth into ``truth_dir``.

    Writes one part file per chunk (so memory stays bounded by ``chunk_rows``); both
    directories are replaced atomically. See the module docstring for the layout.
    """
    t0 = time.perf_counter()
    world = build_world(cfg)
    n_chunks = -(-cfg.rows // cfg.chunk_rows)
    files, truth_files = [], []
    totals = {k: 0 for k in CORRUPTIONS}
    n_pos, prob_sum, kind_offset = 0, 0.0, 0
    history = warm_history(cfg, world)  # purchases so far (from 60 days before): repeats span chunks
    with atomic_dir(out_dir) as out_tmp, atomic_dir(truth_dir) as truth_tmp:
        for chunk in range(n_chunks):
            frame, truth = generate_chunk(cfg, world, chunk, history)
            n_pos += int(frame["purchased"].sum())
            prob_sum += float(truth["purchase_prob"].sum())
            name = f"part-{chunk:05d}"
            if cfg.format == "criteo":
                from features.criteo import write_criteo

                crit = to_criteo(frame, np.random.default_rng([cfg.seed, 4, chunk]))
                write_criteo(crit, out_tmp / f"{name}.tsv")
                files.append(out_dir / f"{name}.tsv")
            else:
                rng = np.random.default_rng([cfg.seed, 3, chunk])
                raw, truth, counts = corrupt(frame, truth, cfg.corrupt_fraction, rng, kind_offset)
                kind_offset += sum(counts.values())
                for k, v in counts.items():
                    totals[k] += v
                if cfg.format == "csv":
                    raw.to_csv(out_tmp / f"{name}.csv", index=False)
                    files.append(out_dir / f"{name}.csv")
                else:
                    raw.to_parquet(out_tmp / f"{name}.parquet", index=False)
                    files.append(out_dir / f"{name}.parquet")
            truth.astype({"event_id": "string", "purchase_prob": "float64"}).to_parquet(
                truth_tmp / f"{name}.parquet", index=False)
            truth_files.append(truth_dir / f"{name}.parquet")
            if n_chunks > 1:
                log("generate", f"chunk {chunk + 1}/{n_chunks}")
        start, end = cfg.window
        result = GenerateResult(
            rows=cfg.rows, files=files, truth_files=truth_files,
            positive_rate=n_pos / cfg.rows, mean_purchase_prob=prob_sum / cfg.rows,
            corrupted=totals, window=(start.date().isoformat(), end.date().isoformat()),
            seconds=time.perf_counter() - t0,
        )
        write_json(out_tmp / "_generate.json", {
            "params": as_dict(cfg), "rows": result.rows, "positive_rate": result.positive_rate,
            "mean_purchase_prob": result.mean_purchase_prob, "corrupted": totals,
            "window": list(result.window), "columns": list(COLUMNS),
        })
    return result


# ---------------------------------------------------------------------------- CLI


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(GenerateConfig, "generate", args.params, args.overrides)
    if args.format:
        cfg = replace(cfg, format=args.format)
    if args.out.resolve() == args.truth.resolve():
        raise StepError(f"--out and --truth are the same directory ({args.out}); the truth must sit beside the data")
    res = generate(cfg, args.out, args.truth)
    bad = sum(res.corrupted.values())
    log("generate", f"{res.rows} rows ({cfg.format}) in {res.seconds:.1f}s -> {args.out}; "
                    f"truth -> {args.truth}; purchase rate {res.positive_rate:.4f}; "
                    f"{bad} corrupted rows; window {res.window[0]}..{res.window[1]} (end exclusive)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate synthetic shop transactions with planted purchase probabilities")
    p.add_argument("--out", type=Path, required=True, help="directory for the raw part files (data/raw)")
    p.add_argument("--truth", type=Path, required=True, help="directory for event_id, purchase_prob (data/truth)")
    p.add_argument("--format", choices=("parquet", "csv", "criteo"), default=None,
                   help="output format (default: generate.format)")
    add_params_args(p)
    p.set_defaults(func=_main)
