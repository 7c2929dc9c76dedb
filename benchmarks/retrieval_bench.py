"""Whole-catalogue retrieval: SLIDE's LSH-sampled softmax against full softmax, sampled softmax
with log-Q correction and in-batch negatives, on a planted catalogue, same threads for all.

The catalogue is :class:`dlrm.retrieval_world.PlantedWorld` (items in latent clusters, users
and categories set a purchase intent; the exact purchase probability of every item is
known, so the oracle's Recall@K is printed beside the models'). Each method trains the same
tower for the same training-time budget; its test Recall@10/@100 and P@1 (exact ranking of
all items) are measured every ``--eval-every`` seconds of training (evaluation time is not
counted), giving the accuracy-vs-time curves: a table, ``<out>/retrieval_bench.json`` and a
PNG plot. For the LSH model it also prints the tables' retrieval quality: Recall@100 of the
LSH top 100 (candidates from the hash tables, scored exactly) against exact maximum
inner-product search over all items, and ms per query of both.

    .venv/bin/python benchmarks/retrieval_bench.py --items 100000 --seconds 60
    .venv/bin/python benchmarks/retrieval_bench.py --items 1000000 --seconds 180 --threads 1 --clock cpu
    .venv/bin/python benchmarks/retrieval_bench.py --items 1000000 --tau 12 8 --oracle-only   # the ceiling only
    .venv/bin/python benchmarks/retrieval_bench.py --items 1000000 --tau 12 8 --seconds 240 --eval-every 48 \
        --threads 1 --clock cpu --no-serving

At 1M items the default ``--tau 4 3`` leaves the planted choice nearly flat (oracle R@100
about 0.03); ``--tau 12 8`` puts it at 0.58.

The machine may be shared: ``--clock cpu`` times training by the process's CPU time, which
other processes disturb less than wall time (with ``--threads 1`` it is the busy time).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dlrm.retrieval import (METHODS, RetrievalConfig, RetrievalData, RetrievalModel, evaluate_retrieval,
                            popularity, retrieval_overlap, train_retrieval)
from dlrm.retrieval_world import PlantedWorld, WorldConfig
from gpu_ops.lsh import LSHConfig, LSHIndex


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--cluster-size", type=int, default=250)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--categories", type=int, default=200)
    p.add_argument("--tau", type=float, nargs=2, default=(4.0, 3.0), metavar=("CLUSTER", "ITEM"),
                   help="sharpness of the planted cluster and item choices")
    p.add_argument("--train-events", type=int, default=200_000)
    p.add_argument("--test-events", type=int, default=500)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seconds", type=float, default=60.0, help="training-time budget per method")
    p.add_argument("--eval-every", type=float, default=0.0, help="seconds between evaluations (0 = budget/5)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--negatives", type=int, default=2048, help="sampled: popularity negatives per batch")
    p.add_argument("--lsh-hash", default="simhash", choices=["simhash", "dwta"])
    p.add_argument("--lsh-bits", type=int, default=0, help="0 = about log2(items / 32)")
    p.add_argument("--lsh-tables", type=int, default=24)
    p.add_argument("--lsh-bucket", type=int, default=32)
    p.add_argument("--lsh-active", type=int, default=256, help="active neurons per sample (most hits)")
    p.add_argument("--lsh-random", type=int, default=256, help="uniform negatives per sample")
    p.add_argument("--lsh-rehash-first", type=int, default=50)
    p.add_argument("--lsh-mips", action="store_true", help="hash through the MIPS-to-cosine transform")
    p.add_argument("--lsh-no-center", action="store_true", help="hash the item rows as they are, not minus their mean")
    p.add_argument("--lsh-no-reinsert", action="store_true", help="do not re-offer each step's labels to the tables")
    p.add_argument("--serve-mips", action="store_true", help="also try serving indexes with the MIPS transform")
    p.add_argument("--serve-bucket", type=int, default=128, help="bucket size of the serving indexes")
    p.add_argument("--serve-budget", type=int, default=4096, help="candidates scored per query when serving")
    p.add_argument("--no-serving", action="store_true",
                   help="skip the serving-index K/L sweep after the LSH model trains (minutes at 1M items)")
    p.add_argument("--oracle-only", action="store_true",
                   help="build the world, print the oracle's recall on the test set and stop (no training)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("reports/retrieval_bench"))
    return p.parse_args(argv)


def lsh_config(a: argparse.Namespace) -> LSHConfig:
    bits = a.lsh_bits or max(4, min(20, round(torch.log2(torch.tensor(a.items / 32.0)).item())))
    return LSHConfig(hash=a.lsh_hash, bits=bits, tables=a.lsh_tables, bucket_size=a.lsh_bucket,
                     max_active=a.lsh_active, random_negatives=a.lsh_random, rehash_first=a.lsh_rehash_first,
                     reinsert_labels=not a.lsh_no_reinsert, mips=a.lsh_mips, center=not a.lsh_no_center, seed=a.seed)


def ms_per_query(fn, batches: list) -> float:
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        fn(b)
        n += b.num_rows
    return (time.perf_counter() - t0) / max(n, 1) * 1e3


@torch.no_grad()
def serving_grid(model: RetrievalModel, test: RetrievalData, a: argparse.Namespace) -> list[dict]:
    """Serving indexes over the trained item vectors: Recall@100 against exact MIPS, candidates, ms/query."""
    layer = model.head.layer
    h = model.hidden(test)
    exact = model.head.scores(h).topk(100, dim=1).indices                      # (n, 100)
    rows = []
    base = layer.cfg.bits
    for mips in (False, True) if a.serve_mips else (False,):
        for bits in sorted({max(4, base - 4), max(4, base - 2)}):
            for tables in (32, 64):
                cfg = LSHConfig(bits=bits, tables=tables, bucket_size=a.serve_bucket, mips=mips, seed=a.seed)
                idx = LSHIndex(layer.dim, layer.num_classes, cfg)
                t0 = time.perf_counter()
                idx.build(layer.weight, layer.bias)
                build_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                got = torch.cat([layer.retrieve(h[i:i + 1], 100, budget=a.serve_budget, index=idx)[1]
                                 for i in range(min(h.shape[0], 200))])
                ms = (time.perf_counter() - t0) / got.shape[0] * 1e3
                overlap = float((exact[:got.shape[0]].unsqueeze(2) == got.unsqueeze(1)).any(2).float().mean())
                cand = float((idx.query(h, budget=a.serve_budget) >= 0).sum(1).float().mean())
                rows.append({"mips": mips, "bits": bits, "tables": tables, "recall_vs_exact_at_100": overlap,
                             "candidates": cand, "ms_per_query": ms, "build_seconds": build_s})
                print(f"  serving index mips={mips!s:5s} K={bits:2d} L={tables:2d}: R@100 vs exact MIPS {overlap:.3f}, "
                      f"{cand:7.0f} candidates, {ms:6.2f} ms/query, built in {build_s:.1f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    a.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    world = PlantedWorld(WorldConfig(items=a.items, cluster_size=a.cluster_size, users=a.users,
                                     categories=a.categories, tau_cluster=a.tau[0], tau_item=a.tau[1],
                                     seed=a.seed))
    test_ctx, test_items = world.sample(a.test_events, seed=a.seed + 2)
    if a.oracle_only:
        oracle = world.oracle_recall(test_ctx, test_items)
        print(f"oracle (planted probabilities), {a.items:,} items, cluster size {a.cluster_size}, tau {a.tau[0]:g} "
              f"{a.tau[1]:g}, {a.users:,} users, {a.categories:,} categories: R@10 {oracle['recall_at_10']:.3f}  "
              f"R@100 {oracle['recall_at_100']:.3f}  P@1 {oracle['p_at_1']:.3f}  ({time.perf_counter() - t0:.1f} s)")
        return {"args": {k: str(v) for k, v in vars(a).items()}, "oracle": oracle}
    train = RetrievalData.from_grid(*world.sample(a.train_events, seed=a.seed + 1))
    test = RetrievalData.from_grid(test_ctx, test_items)
    print(f"world: {a.items:,} items, {a.train_events:,} training / {a.test_events:,} test purchases "
          f"({len(train.items.unique()):,} distinct items bought) in {time.perf_counter() - t0:.1f} s; "
          f"{a.threads} thread(s), clock {a.clock}")
    t0 = time.perf_counter()
    oracle = world.oracle_recall(test_ctx, test_items)
    print(f"oracle (planted probabilities): R@10 {oracle['recall_at_10']:.3f}  R@100 {oracle['recall_at_100']:.3f}  "
          f"P@1 {oracle['p_at_1']:.3f}  ({time.perf_counter() - t0:.1f} s)")

    pop = popularity(train.items, a.items)
    lsh = lsh_config(a)
    eval_every = a.eval_every or a.seconds / 5
    results: dict = {"args": {k: str(v) for k, v in vars(a).items()}, "oracle": oracle, "lsh": asdict(lsh),
                     "methods": {}}
    for method in a.methods.split(","):
        cfg = RetrievalConfig(method=method, dim=a.dim, lsh=lsh, negatives=a.negatives, batch_size=a.batch_size,
                              epochs=10 ** 6, seed=a.seed)
        model = RetrievalModel(world.table_sizes, a.items, cfg, pop)
        t0 = time.perf_counter()
        log = train_retrieval(model, train, evaluate=lambda: evaluate_retrieval(model, test),
                              eval_seconds=eval_every, max_seconds=a.seconds, clock=clock)
        entry = {"curve": log.rows, "steps": log.steps, "train_seconds": log.train_seconds,
                 "seconds_per_step": log.train_seconds / max(log.steps, 1),
                 "wall_seconds_with_evals": time.perf_counter() - t0}
        if method == "lsh":
            layer = model.head.layer
            entry["rehashes"] = layer.rehashes
            model.head.layer.rehash()               # retrieval serves fresh tables
            entry["lsh_vs_exact_mips_recall_at_100"] = retrieval_overlap(model, test, k=100)
            entry["lsh_retrieved"] = evaluate_retrieval(model, test, exact=False)
            batches = list(test.batches(1))[:200]
            with torch.no_grad():
                entry["ms_per_query_lsh"] = ms_per_query(lambda b: model.recommend(b, 100, exact=False), batches)
                entry["ms_per_query_exact"] = ms_per_query(lambda b: model.recommend(b, 100, exact=True), batches)
            entry["candidates_per_query"] = float((layer.index.query(model.hidden(test).detach(),
                                                                     budget=lsh.max_active) >= 0).sum(1).float().mean())
            if not a.no_serving:
                entry["serving"] = serving_grid(model, test, a)
        results["methods"][method] = entry
        (a.out / "retrieval_bench.json").write_text(json.dumps(results, indent=2))   # a cut-short run keeps its curves
        last = log.rows[-1]
        print(f"{method:8s} {log.steps:6d} steps  {log.train_seconds:7.1f} s  {entry['seconds_per_step'] * 1e3:7.1f} ms/step  "
              f"R@10 {last['recall_at_10']:.3f}  R@100 {last['recall_at_100']:.3f}  P@1 {last['p_at_1']:.3f}", flush=True)
        del model

    report(results)
    (a.out / "retrieval_bench.json").write_text(json.dumps(results, indent=2))
    plot(results, a.out / "retrieval_bench.png")
    print(f"wrote {a.out / 'retrieval_bench.json'} and {a.out / 'retrieval_bench.png'}")
    return results


def report(results: dict) -> None:
    """Accuracy-vs-time table, the time to reach the full softmax's final Recall@100, LSH retrieval."""
    print("\naccuracy vs training time (test set, exact ranking of all items)")
    print(f"{'method':8s} {'step':>6s} {'seconds':>8s} {'loss':>7s} {'R@10':>6s} {'R@100':>6s} {'P@1':>6s}")
    for m, e in results["methods"].items():
        for r in e["curve"]:
            print(f"{m:8s} {r['step']:6d} {r['seconds']:8.1f} {r['loss']:7.3f} {r['recall_at_10']:6.3f} "
                  f"{r['recall_at_100']:6.3f} {r['p_at_1']:6.3f}")
    o = results["oracle"]
    print(f"{'oracle':8s} {'':6s} {'':8s} {'':7s} {o['recall_at_10']:6.3f} {o['recall_at_100']:6.3f} {o['p_at_1']:6.3f}")
    full = results["methods"].get("full")
    if full:
        target, t_full = full["curve"][-1]["recall_at_100"], full["curve"][-1]["seconds"]
        print(f"\nfull softmax: R@100 {target:.3f} after {t_full:.1f} s; first evaluation of each method "
              f"within 2% (relative) of it:")
        for m, e in results["methods"].items():
            hit = next((r for r in e["curve"] if r["recall_at_100"] >= 0.98 * target), None)
            print(f"  {m:8s} " + (f"{hit['seconds']:.1f} s = {hit['seconds'] / t_full:.2f}x full's time"
                                  if hit else "not reached in its budget"))
    lsh = results["methods"].get("lsh")
    if lsh and lsh.get("serving"):
        best = max(lsh["serving"], key=lambda r: (r["recall_vs_exact_at_100"], -r["ms_per_query"]))
        print(f"\nbest serving index: mips={best['mips']} K={best['bits']} L={best['tables']}: Recall@100 vs exact "
              f"MIPS {best['recall_vs_exact_at_100']:.3f}, {best['candidates']:.0f} candidates, "
              f"{best['ms_per_query']:.2f} ms/query (exact: {lsh['ms_per_query_exact']:.2f} ms)")
    if lsh:
        print(f"LSH retrieval (training index): Recall@100 against exact MIPS {lsh['lsh_vs_exact_mips_recall_at_100']:.3f}; "
              f"{lsh['candidates_per_query']:.0f} candidates/query; {lsh['ms_per_query_lsh']:.2f} ms/query vs "
              f"{lsh['ms_per_query_exact']:.2f} ms exact ({lsh['ms_per_query_exact'] / lsh['ms_per_query_lsh']:.1f}x); "
              f"R@100 of the purchased item through the tables {lsh['lsh_retrieved']['recall_at_100']:.3f}; "
              f"{lsh['rehashes']} rehashes while training")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("recall_at_100", "recall_at_10")):
        for m, e in results["methods"].items():
            ax.plot([r["seconds"] for r in e["curve"]], [r[key] for r in e["curve"]], marker="o", label=m)
        ax.axhline(results["oracle"][key], color="grey", linestyle="--", label="oracle")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel(key.replace("recall_at_", "Recall@"))
        ax.grid(alpha=0.3)
    axes[0].legend()
    a = results["args"]
    fig.suptitle(f"{int(a['items']):,} items, {a['threads']} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
