"""Retrieval + ranking latency: `robeflow serve` answering "what should this user see?"
(a v1 request without item_ids) with one client, at several catalogue sizes.

What it does, per catalogue size N (``--items 100000,1000000``):

1. The feature repo and the ROBE ranker of ``benchmarks/serve_bench.py`` (random weights,
   the ``train.model`` section of params.yaml; latency does not depend on training).
2. A retrieval bundle of N items written by ``dlrm.bundle.save_retrieval``: the tower of the
   ``retrieval`` section (random weights) and item vectors laid out like a trained
   catalogue: the planted world of ``dlrm/retrieval_world.py`` (clusters of 100 items;
   vector = cluster centre + item offset, padded with small noise to the tower's width;
   bias = the item's planted popularity). Item ids ``i0 .. i{N-1}``: the feature repo knows
   the first few thousand, the rest are read as unknown items (features filled as in
   training).
3. Both pushed into one registry version with ``robeflow push --retrieval``'s core;
   ``robeflow serve`` started on loopback with ``--set`` overrides (e.g.
   ``serve.retrieval_index=lsh``), one closed-loop client sends ``--requests`` bodies
   ``{"user_id", "k": 10, "context"}`` one after the other.

Prints per N and index: p50/p95/p99 latency (ms) over HTTP, and in process where the time
goes (retrieval: features + tower + top candidates; ranking of the candidates; and stage by
stage: online reads, transforms, tower, LSH probes, exact scores, DLRM forward) and the
share of the exact top 100 the LSH index finds (its recall against exact inner-product
search) on the same users, and on the planted world's own user vectors (``h = [z, 0]``,
the intents the item vectors were planted for: what a trained tower approaches); with
``--misses`` that recall, the items scored and the search time at several ``serve.lsh_miss``
values, beside the exact scan over all items timed on the same vectors in the same run.

The machine is shared: compare figures within one run (run it more than once), and note
the load (``uptime``) beside them. ``--against CHECKOUT`` compares two versions of the code
under the same load: both servers up at once, each request sent to both, the first one
alternating, and their answers compared (``git worktree add --detach /tmp/base HEAD``, then
``--against /tmp/base``).

    .venv/bin/python benchmarks/retrieve_bench.py --items 100000,1000000 --requests 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from serve_bench import build_repo, free_port, make_bundles, start_server, stop_server  # noqa: E402


def retrieval_bundle(work: Path, ranker_spec, n: int) -> Path:
    """A retrieval bundle of ``n`` items (random tower, planted item vectors) for the repo's spec."""
    import torch

    from components.retrieval import RetrievalStepConfig, _context_spec
    from contract.params import load_config
    from dlrm.bundle import save_retrieval
    from dlrm.retrieval import RetrievalModel
    from dlrm.retrieval_world import PlantedWorld, WorldConfig

    out = work / f"retrieval-{n}"
    if (out / "config.json").is_file():
        return out
    cfg = load_config(RetrievalStepConfig, "retrieval", REPO_ROOT / "params.yaml")
    spec = _context_spec(work / "model_input", cfg.context)
    model = RetrievalModel(spec.table_sizes, n, cfg.model)
    world = PlantedWorld(WorldConfig(items=n, cluster_size=100, latent=16))
    k = torch.arange(n) // 100
    g = torch.Generator().manual_seed(1)
    d = cfg.model.dim
    with torch.no_grad():
        model.head.weight.copy_(torch.cat([4 * world.centres[k] + 3 * world.offsets,
                                           0.05 * torch.randn(n, d - 16, generator=g)], 1))
        model.head.bias.copy_(world.item_pop)
    popularity = torch.poisson(torch.exp(world.item_pop + world.cluster_pop[k]), generator=g).long()
    save_retrieval(model, out, spec=spec, items=[f"i{j}" for j in range(n)], popularity=popularity,
                   config=cfg.as_params(), metrics={"items": n, "method": "benchmark (planted vectors)"})
    return out


def push_both(work: Path, ranker: dict, retrieval_dir: Path, n: int) -> Path:
    from components.push import PushConfig, push

    registry = work / f"registry-retrieval-{n}"
    if (registry / "production").is_file():
        return registry
    model_dir = work / "model-robe"
    res = push(PushConfig(force=True), model_dir, work / "metrics-robe.json", registry=str(registry),
               retrieval_dir=retrieval_dir)
    assert res.pushed, res.reason
    return registry


def bodies(users: list[str], n: int, k: int = 10, seed: int = 2) -> list[dict]:
    rng = np.random.default_rng(seed)
    devices, countries = ("mobile", "desktop", "app_ios", "app_android"), ("DE", "FR", "US", "GB")
    terms = ("shampoo", "men", "red", "kids", "gift", "organic")
    return [{"instances": [{"user_id": str(rng.choice(users)), "k": k, "context": {
        "device": str(rng.choice(devices)), "country": str(rng.choice(countries)), "hour": int(rng.integers(0, 24)),
        "query": " ".join(rng.choice(terms, int(rng.integers(0, 3))))}}]} for _ in range(n)]


def over_http(registry: Path, repo: Path, work: Path, reqs: list[dict], overrides: list[str], warmup: int) -> dict:
    import httpx

    port = free_port()
    proc = start_server(registry, repo, port, work / "retrieve_server.log", ["serve.reload_s=0", *overrides])
    try:
        url = f"http://127.0.0.1:{port}/v1/models/robeflow:predict"
        lat, errors = [], 0
        with httpx.Client(timeout=30) as client:
            for i, body in enumerate(reqs):
                t0 = time.perf_counter()
                r = client.post(url, json=body)
                dt = time.perf_counter() - t0
                if r.status_code != 200 or not r.json()["predictions"][0].get("retrieved"):
                    errors += 1
                elif i >= warmup:
                    lat.append(dt * 1e3)
    finally:
        stop_server(proc)
    a = np.array(lat)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "requests": len(a), "errors": errors}


def paired_http(registry: Path, repo: Path, work: Path, reqs: list[dict], overrides: list[str], warmup: int,
                against: Path) -> dict:
    """This checkout's server and the one of the checkout at ``against`` (e.g. a git worktree of
    HEAD), both up at once, one client sending each request to both (which goes first
    alternates): latencies paired under the same load (on a shared machine, runs one after
    the other see different loads), and how many answers (items and scores) agree."""
    import httpx

    servers = {"this": REPO_ROOT, "against": against.resolve()}
    procs, urls = {}, {}
    try:
        for name, root in servers.items():
            port = free_port()
            procs[name] = start_server(registry, repo, port, work / f"retrieve_server_{name}.log",
                                       ["serve.reload_s=0", *overrides], root=root)
            urls[name] = f"http://127.0.0.1:{port}/v1/models/robeflow:predict"
        lat: dict[str, list[float]] = {name: [] for name in servers}
        answers: dict[str, list] = {name: [] for name in servers}
        errors = 0
        with httpx.Client(timeout=30) as client:
            for i, body in enumerate(reqs):
                for name in (list(servers) if i % 2 == 0 else list(servers)[::-1]):
                    t0 = time.perf_counter()
                    r = client.post(urls[name], json=body)
                    dt = time.perf_counter() - t0
                    if r.status_code != 200:
                        errors += 1
                        answers[name].append(None)
                        continue
                    answers[name].append(r.json()["predictions"])
                    if i >= warmup:
                        lat[name].append(dt * 1e3)
    finally:
        for proc in procs.values():
            stop_server(proc)
    out = {"paired_requests": len(reqs), "paired_errors": errors,
           "paired_same_answers": sum(a is not None and a == b for a, b in zip(answers["this"], answers["against"]))}
    for name, v in lat.items():
        a = np.array(v)
        out.update({f"paired_{name}_{q}_ms": float(np.percentile(a, int(q[1:]))) for q in ("p50", "p95", "p99")})
    return out


def mixed_http(registry: Path, repo: Path, work: Path, reqs: list[dict], rank_reqs: list[dict],
               overrides: list[str], seconds: float) -> dict:
    """Two closed-loop clients at once for ``seconds``: one asks for recommendations (retrieval +
    ranking), the other ranks the 200 items it sends. While a retrieval holds the server's
    event loop the ranking client waits behind it; off the loop, it does not."""
    import threading

    import httpx

    port = free_port()
    proc = start_server(registry, repo, port, work / "retrieve_server.log", ["serve.reload_s=0", *overrides])
    url = f"http://127.0.0.1:{port}/v1/models/robeflow:predict"
    lat: dict[str, list[float]] = {"recommend": [], "rank": []}
    errors = {"recommend": 0, "rank": 0}
    stop = time.monotonic() + seconds

    def client(kind: str, bodies: list[dict]) -> None:
        with httpx.Client(timeout=30) as c:
            for _ in range(3):   # warm-up
                c.post(url, json=bodies[0])
            i = 0
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.post(url, json=bodies[i % len(bodies)])
                if r.status_code == 200:
                    lat[kind].append(1e3 * (time.perf_counter() - t0))
                else:
                    errors[kind] += 1
                i += 1

    try:
        threads = [threading.Thread(target=client, args=a) for a in (("recommend", reqs), ("rank", rank_reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop_server(proc)
    out = {}
    for kind, v in lat.items():
        a = np.array(v)
        out.update({f"mixed_{kind}_p50_ms": float(np.percentile(a, 50)), f"mixed_{kind}_p99_ms": float(np.percentile(a, 99)),
                    f"mixed_{kind}_requests": len(a), f"mixed_{kind}_errors": errors[kind]})
    return out


def stages(model, rq: list) -> dict:
    """p50 ms of each stage of one recommendation, timed one after the other on the same
    requests: the tower's online read, transform + tower, the index's probes (LSH), the
    candidates' exact scores and top, the ranker's online read of the candidates, its
    transform, the DLRM forward pass and the sort (a ranker without the history tower)."""
    import torch

    from contract.spec import ModelInput
    from dlrm.bundle import predict
    from features.transform import model_columns
    from serving.requests import ScoreRequest

    ret, ranker = model.retriever, model.ranker
    if ranker.reads_history:
        return {}
    spans: dict[str, list[float]] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        got = fn()
        spans.setdefault(name, []).append(1e3 * (time.perf_counter() - t0))
        return got

    for r in rq:
        columns = timed("stage_tower_read", lambda: ret._read(r))
        if not isinstance(columns, dict):
            continue
        hidden = timed("stage_tower", lambda: ret._hidden([(r, columns)]))
        n = max(ret.cfg.retrieve_candidates, r.k)
        if ret.index is not None:
            timed("stage_lsh_search", lambda: ret.index.search(hidden[0], n, miss=ret.cfg.lsh_miss,
                                                                budget=ret.cfg.lsh_budget))
        (rows,) = timed("stage_top_candidates", lambda: ret.top_many(hidden, [n]))
        request = ScoreRequest(r.user_id, tuple(ret.items[i] for i in rows), r.context)
        part = timed("stage_rank_read", lambda: ranker._columns(request))
        inputs = timed("stage_rank_transform", lambda: ModelInput.from_columns(
            model_columns(part, len(rows), ranker.spec), ranker.spec, history=False))
        probs = timed("stage_rank_forward", lambda: predict(ranker.model, inputs, batch_size=max(1, len(rows))))
        timed("stage_rank_sort", lambda: ranker.ranked(request, probs))
    out = {f"{k}_ms_p50": float(np.median(v)) for k, v in spans.items()}
    print("    stages p50 (ms): " + ", ".join(f"{k.removeprefix('stage_')} {float(np.median(v)):.2f}"
                                        for k, v in spans.items()) +
          " (top_candidates includes the search)", flush=True)
    return out


def gc_pause(rounds: int = 5) -> dict:
    """A full garbage collection's pause with the loaded model frozen out of the collector
    (as ``RobeflowModel.load`` leaves it) and unfrozen (as before), alternating, in ms (median)."""
    import gc

    frozen, thawed = [], []
    for _ in range(rounds):
        for freeze, into in ((True, frozen), (False, thawed)):
            gc.collect()
            if freeze:
                gc.freeze()
            else:
                gc.unfreeze()
            t0 = time.perf_counter()
            gc.collect()
            into.append(1e3 * (time.perf_counter() - t0))
    gc.collect()
    tracked = len(gc.get_objects())
    gc.freeze()
    print(f"    full gc collection: {np.median(frozen):.1f} ms with the model frozen, {np.median(thawed):.1f} ms "
          f"unfrozen ({tracked:,} objects tracked)", flush=True)
    return {"gc_full_ms_frozen": float(np.median(frozen)), "gc_full_ms_unfrozen": float(np.median(thawed)),
            "gc_tracked_objects": tracked}


def in_process(registry: Path, repo: Path, reqs: list[dict], overrides: dict, n_time: int,
               misses: list[float] | None = None) -> dict:
    """Where a request's time goes, and the LSH index's recall against exact search."""
    import torch

    from serving.config import ServeConfig
    from serving.predictor import RobeflowModel
    from serving.requests import RetrieveRequest, ScoreRequest

    model = RobeflowModel(ServeConfig(reload_s=0, **overrides), registry, repo)
    t0 = time.perf_counter()
    model.load()
    load_s = time.perf_counter() - t0
    ret, ranker = model.retriever, model.ranker
    rq = [RetrieveRequest(b["instances"][0]["user_id"], 10, b["instances"][0]["context"]) for b in reqs[:n_time]]
    t_ret, t_rank = [], []
    for r in rq:
        t0 = time.perf_counter()
        (c,) = ret.retrieve_many([r])
        t1 = time.perf_counter()
        ranker.rank(ScoreRequest(r.user_id, c.items, r.context))
        t_rank.append(time.perf_counter() - t1)
        t_ret.append(t1 - t0)
    out = {"method": ret.method, "load_s": load_s, "retrieval_ms_p50": 1e3 * float(np.median(t_ret)),
           "retrieval_ms_p99": 1e3 * float(np.percentile(t_ret, 99)), "ranking_ms_p50": 1e3 * float(np.median(t_rank)),
           "ranking_ms_p99": 1e3 * float(np.percentile(t_rank, 99)), "candidates": model.cfg.retrieve_candidates}
    out.update(stages(model, rq))
    out.update(gc_pause())
    if ret.index is not None:   # recall of the tables' top 100 against exact inner products, same users
        from dataclasses import replace

        from contract.spec import ModelInput
        from dlrm.retrieval_world import PlantedWorld, WorldConfig
        from features.transform import model_columns

        hs = []
        for r in rq:
            cols = ret.features.columns(r.user_id, [ret.anchor], r.context)
            mi = ModelInput.from_columns(model_columns(cols, 1, ret.spec), ret.spec)
            with torch.no_grad():
                hs.append(ret.model.tower(torch.from_numpy(mi.sparse_values),
                                          torch.from_numpy(mi.sparse_offsets)).float())
        # the planted world's own intents as user vectors (the tower a trained model approaches:
        # the item vectors are the world's), beside the random tower's
        world = PlantedWorld(WorldConfig(items=ret.num_items, cluster_size=100, latent=16))
        ctx, _ = world.sample(len(rq), seed=4)
        z = world.z(ctx)
        queries = {"tower": torch.cat(hs), "planted": torch.cat([z, z.new_zeros(len(z), ret.weight.shape[1] - 16)], 1)}
        cfg = ret.cfg
        n = max(cfg.retrieve_candidates, 100)
        exact, exact_ms = {}, {}
        for name, h in queries.items():   # the reference: one scan over all items per user, timed alike
            spent, rows = [], []
            for j in range(h.shape[0]):
                t0 = time.perf_counter()
                rows.append(ret._exact(h[j:j + 1], n)[0, :100])
                spent.append(time.perf_counter() - t0)
            exact[name], exact_ms[name] = torch.stack(rows), 1e3 * float(np.median(spent))
            out[f"exact_search_ms_p50{'' if name == 'tower' else '_planted'}"] = exact_ms[name]
        for miss in misses or [cfg.lsh_miss]:
            ret.cfg = replace(cfg, lsh_miss=miss)
            for name, h in queries.items():
                found, spent, scored = 0, [], []
                for j in range(h.shape[0]):
                    t0 = time.perf_counter()
                    (got,) = ret.top_many(h[j:j + 1], [n])
                    spent.append(time.perf_counter() - t0)
                    found += len(set(exact[name][j].tolist()) & set(got[:100]))
                    scored.append(ret.index.search(h[j], n, miss=miss, budget=cfg.lsh_budget).scored)
                key = "" if name == "tower" else "_planted"
                suffix = "" if miss == cfg.lsh_miss else f"_miss{miss}"
                recall, ms = found / (100 * h.shape[0]), 1e3 * float(np.median(spent))
                out[f"lsh_recall_vs_exact_at_100{key}{suffix}"] = recall
                out[f"lsh_search_ms_p50{key}{suffix}"] = ms
                out[f"lsh_scored{key}{suffix}"] = float(np.mean(scored))
                print(f"    lsh miss {miss:<5}: {name:7s} user vectors: recall@100 vs exact {recall:.3f}, "
                      f"items scored {np.mean(scored):,.0f} of {ret.num_items:,}, search p50 {ms:.1f} ms "
                      f"(p90 {1e3 * float(np.quantile(spent, 0.9)):.1f}) vs exact scan {exact_ms[name]:.1f} ms "
                      f"({exact_ms[name] / ms:.1f}x)", flush=True)
        ret.cfg = cfg
    model.unload()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "serve_bench")
    ap.add_argument("--items", default="100000,1000000", help="catalogue sizes, comma-separated")
    ap.add_argument("--indexes", default="auto", help="serve.retrieval_index values to run, comma-separated")
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per run (one client)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--breakdown", type=int, default=100, help="requests timed stage by stage in process")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="serve.KEY=VALUE")
    ap.add_argument("--misses", default="", help="LSH: also measure recall, items scored and search time in process "
                                                  "at these serve.lsh_miss values, comma-separated")
    ap.add_argument("--mixed", type=float, default=0.0, metavar="SECONDS",
                    help="also run a recommending client and a ranking client (200 given items) at once for "
                         "SECONDS and print both latencies")
    ap.add_argument("--against", type=Path, metavar="CHECKOUT",
                    help="also serve the same bundles from the checkout at CHECKOUT (e.g. `git worktree add "
                         "--detach /tmp/base HEAD`) beside this one, one client alternating between the two: "
                         "paired latencies under the same load, and whether the answers agree")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the in-process timing and recall")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    sys.argv = sys.argv[:1]   # kserve parses the command line when imported (--work reads as its --workers)

    from contract.spec import FeatureSpec

    args.work.mkdir(parents=True, exist_ok=True)
    repo = build_repo(args.work, rows=30000, users=3000, items=2000)
    spec = FeatureSpec.load(args.work / "model_input" / "feature_spec.json")
    ranker = make_bundles(args.work, spec, 10, 1000.0, ("robe",))["robe"]
    users = [f"u{u}" for u in range(3000)]
    reqs = bodies(users, args.requests)
    results = []
    for n in [int(x) for x in args.items.split(",")]:
        t0 = time.perf_counter()
        registry = push_both(args.work, ranker, retrieval_bundle(args.work, spec, n), n)
        print(f"{n:,} items: bundle ready in {time.perf_counter() - t0:.0f}s", flush=True)
        for index in args.indexes.split(","):
            sets = [f"serve.retrieval_index={index}", *args.overrides]
            kv = {s.split("=", 1)[0].removeprefix("serve."): s.split("=", 1)[1] for s in sets}
            from serving.config import ServeConfig
            from dataclasses import fields

            types = {f.name: f.type for f in fields(ServeConfig)}
            typed = {k: (int(v) if types[k] == "int" else float(v) if types[k] == "float" else v) for k, v in kv.items()}
            misses = [float(m) for m in args.misses.split(",") if m]
            proc = {} if args.no_breakdown else in_process(registry, repo, reqs, typed, args.breakdown, misses)
            http = over_http(registry, repo, args.work, reqs, sets, args.warmup)
            row = {"items": n, "index": index, **proc, **{f"http_{k}": v for k, v in http.items()}}
            if args.against is not None:
                row.update(paired_http(registry, repo, args.work, reqs, sets, args.warmup, args.against))
                print(f"{n:>9,} items  {index:5s} paired, one client alternating: this checkout p50 "
                      f"{row['paired_this_p50_ms']:.1f} / p95 {row['paired_this_p95_ms']:.1f} / p99 "
                      f"{row['paired_this_p99_ms']:.1f} ms; {args.against} p50 {row['paired_against_p50_ms']:.1f} / "
                      f"p95 {row['paired_against_p95_ms']:.1f} / p99 {row['paired_against_p99_ms']:.1f} ms; "
                      f"same answers {row['paired_same_answers']}/{row['paired_requests']}", flush=True)
            if args.mixed > 0:
                from serve_bench import make_requests

                rank_reqs = make_requests(users, [f"i{j}" for j in range(2000)], 100, 200)
                row.update(mixed_http(registry, repo, args.work, reqs, rank_reqs, sets, args.mixed))
                print(f"{n:>9,} items  {index:5s} mixed, 2 clients for {args.mixed:.0f}s: recommend p50 "
                      f"{row['mixed_recommend_p50_ms']:.1f} / p99 {row['mixed_recommend_p99_ms']:.1f} ms "
                      f"({row['mixed_recommend_requests']} requests); rank 200 given items p50 "
                      f"{row['mixed_rank_p50_ms']:.1f} / p99 {row['mixed_rank_p99_ms']:.1f} ms "
                      f"({row['mixed_rank_requests']} requests)", flush=True)
            results.append(row)
            recall = f", LSH recall@100 vs exact {row['lsh_recall_vs_exact_at_100']:.3f}" \
                if "lsh_recall_vs_exact_at_100" in row else ""
            split = "" if not proc else (
                f"; in process retrieval p50 {row['retrieval_ms_p50']:.1f} / p99 "
                f"{row['retrieval_ms_p99']:.1f} ms, ranking {row['candidates']} candidates p50 "
                f"{row['ranking_ms_p50']:.1f} / p99 {row['ranking_ms_p99']:.1f} ms; load {row['load_s']:.0f}s")
            print(f"{n:>9,} items  {index:5s} -> {row.get('method', index):5s}: HTTP one client p50 "
                  f"{http['p50_ms']:.1f} ms, p95 {http['p95_ms']:.1f}, p99 {http['p99_ms']:.1f} ms "
                  f"({http['requests']} requests, {http['errors']} errors){split}{recall}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
