"""Serving load test: `robeflow serve` on loopback under N concurrent clients, for a ROBE
bundle and a full-table bundle of the same DLRM.

What it does:
1. A materialised feature repo: ``--features DIR`` (e.g. data/features), or one built
   once under ``--work`` by the real features step from seeded synthetic transactions.
2. Two bundles of the same architecture (the ``train.model`` section of params.yaml,
   random weights: latency and size do not depend on training) over the same virtual
   tables, the repo's table sizes times ``--table-scale``: ``robe`` (one ROBE-Z array,
   ``--compression``) and ``full`` (one float32 row per id). Each is pushed with
   ``robeflow push``'s core into its own registry under ``--work``.
3. For each: starts ``robeflow serve`` on 127.0.0.1 (a subprocess), waits for readiness,
   drives ``POST /v1/models/robeflow:predict`` with ``--clients`` concurrent closed-loop
   clients (one user, ``--candidates`` items and a context per request) for ``--seconds``
   or ``--max-requests``, whichever comes first, then stops the server.

Prints per bundle: bundle bytes, p50/p95/p99 latency (ms), requests/s, errors (non-200 or
transport errors), the server's resident memory after the run, the CPU time per request
of the server and of the load generator; and, in process, where one request's time goes
(online read, transform, model) averaged over ``--breakdown`` requests, and the cost per
request of scoring batches of 32. The clients run on the same machine as the server and
share its cores (with 2 cores, the load generator's CPU time is taken from the server).

Open-loop mode (``--rates 50,100,200,400``): instead of closed-loop clients, requests
arrive as a Poisson process at each offered rate for ``--seconds``; prints p50/p99 per rate
(latency from the scheduled arrival, so falling behind counts) and the highest rate whose
p99 stays under ``--p99-target-ms`` (20) with no errors.

    .venv/bin/python benchmarks/serve_bench.py --seconds 20 --clients 50
    .venv/bin/python benchmarks/serve_bench.py --rates 50,100,200,400 --seconds 10 --breakdown 0
    .venv/bin/python benchmarks/serve_bench.py --features data/features --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")


# ---- the feature repo ------------------------------------------------------------------

def build_repo(work: Path, rows: int, users: int, items: int, days: int = 10) -> Path:
    """Runs the features step on seeded synthetic transactions (once; reused after)."""
    import pandas as pd

    from components.features import FeaturesConfig, features
    from contract.schema import COLUMNS, COUNTRIES, DEVICES

    repo = work / "features"
    if (repo / "feature_store.yaml").is_file() and (work / "model_input" / "feature_spec.json").is_file():
        return repo
    rng = np.random.default_rng(0)
    item = np.minimum(rng.zipf(1.2, rows) - 1, items - 1)
    l1 = np.array(("beauty", "garden", "books", "toys", "food"))[item % 5]
    terms = np.array(("shampoo", "men", "red", "kids", "gift", "organic", "sale", "large"))
    ts = pd.Timestamp("2026-10-01", tz="UTC") + pd.to_timedelta(rng.uniform(0, days * 86400, rows), unit="s")
    ev = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(rows)], "event_timestamp": ts,
        "user_id": [f"u{u}" for u in rng.integers(0, users, rows)], "item_id": [f"i{i}" for i in item],
        "query": [" ".join(rng.choice(terms, k)) for k in rng.integers(0, 3, rows)],
        "category_l1": l1, "category_l2": np.char.add(l1, (item % 9).astype(str)),
        "category_l3": np.char.add(l1, (item % 31).astype(str)), "brand": [f"b{i % 50}" for i in item],
        "price": np.round(3 + (item * 7.3) % 200, 2), "position": rng.integers(1, 40, rows),
        "device": rng.choice(DEVICES, rows), "country": rng.choice(COUNTRIES, rows),
        "purchased": (rng.random(rows) < 0.05).astype(int),
    }).astype(COLUMNS).sort_values("event_timestamp", kind="stable")
    validated = work / "validated"
    day = ev["event_timestamp"].dt.strftime("%Y-%m-%d")
    for d, part in ev.groupby(day):
        (validated / f"day={d}").mkdir(parents=True, exist_ok=True)
        part.to_parquet(validated / f"day={d}" / "part-0.parquet", index=False)
    features(FeaturesConfig(test_days=1, valid_days=1), validated, repo, work / "model_input")
    return repo


# ---- the bundles -----------------------------------------------------------------------

def make_bundles(work: Path, spec, scale: int, compression: float,
                 backends: tuple[str, ...] = ("robe", "full")) -> dict[str, dict]:
    """A ROBE and a full-table bundle of the same DLRM, each pushed to its own registry."""
    import torch

    from contract.params import load_config
    from components.push import PushConfig, push, sha256_file
    from dlrm.bundle import WEIGHTS, save_model
    from dlrm.configs import TrainConfig
    from dlrm.model import DLRM
    from contract.spec import FeatureSpec

    big = FeatureSpec.from_dict({**json.loads(spec.to_json()), "sparse": [
        {"name": s.name, "table_size": s.table_size * scale, "multi_hot": s.multi_hot} for s in spec.sparse]})
    model_cfg = load_config(TrainConfig, "train", REPO_ROOT / "params.yaml").model
    out = {}
    for backend in backends:
        cfg = replace(model_cfg, embedding=replace(model_cfg.embedding, backend=backend, compression=compression))
        torch.manual_seed(0)
        model = DLRM(cfg, len(big.dense), big.table_sizes)
        model_dir, registry = work / f"model-{backend}", work / f"registry-{backend}"
        save_model(model, model_dir, spec=big, config={"model": backend})
        metrics = work / f"metrics-{backend}.json"
        metrics.write_text(json.dumps({"auc": None, "target_auc": None, "gate": "benchmark", "passed": True,
                                       "backend": backend, "model_sha256": sha256_file(model_dir / WEIGHTS)}))
        # a benchmark bundle of random weights: published whatever a gate would say
        res = push(PushConfig(force=True), model_dir, metrics, registry=str(registry))
        bundle = registry / (res.version or "v1")
        out[backend] = {
            "registry": registry,
            "bundle_bytes": sum(p.stat().st_size for p in bundle.iterdir()),
            "embedding_bytes": model.embedding.num_bytes,
            "full_bytes": model.embedding.full_bytes,
            "table_rows": sum(big.table_sizes),
        }
        del model
    return out


# ---- the load ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list:
    """The server process and its worker processes (serve.workers > 1)."""
    import psutil

    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the server and its workers, threads included, so far."""
    total = 0.0
    for p in _tree(pid):
        t = p.cpu_times()
        total += t.user + t.system
    return total


def rss_bytes(pid: int) -> int:
    """Resident bytes of the server and its workers (each counted whole: shared pages twice)."""
    return sum(p.memory_info().rss for p in _tree(pid))


def start_server(registry: Path, repo: Path, port: int, log: Path, overrides: list[str],
                 root: Path = REPO_ROOT) -> subprocess.Popen:
    """``robeflow serve`` of the checkout at ``root`` (default: this one) on 127.0.0.1:port,
    once it answers ready."""
    import httpx

    cmd = [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())",
           "serve", "--registry", str(registry), "--features", str(repo), "--host", "127.0.0.1",
           "--port", str(port), "--params", str(root / "params.yaml"),
           *[a for o in overrides for a in ("-S", o)]]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/models/robeflow/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server not ready after 300 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_requests(users: list[str], items: list[str], n: int, k: int, seed: int = 1) -> list[dict]:
    """``n`` v1 bodies: a known user (one in 10 unknown), ``k`` candidates (5% unknown items)."""
    rng = np.random.default_rng(seed)
    devices, countries = ("mobile", "desktop", "app_ios", "app_android"), ("DE", "FR", "US", "GB")
    queries = ("", "red gift", "men shampoo", "kids toys sale", "organic")
    out = []
    for j in range(n):
        user = str(rng.choice(users)) if rng.random() > 0.1 else f"new-user-{j}"
        cands = [str(x) for x in rng.choice(items, k, replace=len(items) < k)]
        cands = [c if rng.random() > 0.05 else f"new-item-{j}-{i}" for i, c in enumerate(cands)]
        out.append({"instances": [{"user_id": user, "item_ids": cands, "context": {
            "query": str(rng.choice(queries)), "device": str(rng.choice(devices)),
            "country": str(rng.choice(countries)), "hour": int(rng.integers(0, 24))}}]})
    return out


async def drive(url: str, bodies: list[dict], clients: int, seconds: float, max_requests: int,
                client_lib: str = "aiohttp") -> dict:
    """Closed-loop load: ``clients`` workers send back to back until the time or count is up.

    ``client_lib``: ``aiohttp`` (kserve's own HTTP client; measured 0.5 ms of CPU per request
    at 50 clients on 2 cores) or ``httpx`` (12.9 ms per request in the same setting, which
    takes the cores from the server it measures)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    stop_at = time.perf_counter() + seconds
    payloads = [json.dumps(b).encode() for b in bodies]
    headers = {"Content-Type": "application/json"}

    if client_lib == "aiohttp":
        import aiohttp

        async def post(session, body: bytes) -> str | None:
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    return None if r.status == 200 else f"HTTP {r.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                return type(e).__name__

        def session_cm():
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                         timeout=aiohttp.ClientTimeout(total=60))
    elif client_lib == "httpx":
        import httpx

        async def post(session, body: bytes) -> str | None:
            try:
                r = await session.post(url, content=body, headers=headers)
                return None if r.status_code == 200 else f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                return type(e).__name__

        def session_cm():
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            return httpx.AsyncClient(timeout=60, limits=limits)
    else:
        raise ValueError(f"client {client_lib!r}; expected aiohttp or httpx")

    async def worker(session, w: int) -> None:
        nonlocal sent
        while time.perf_counter() < stop_at and sent < max_requests:
            body = payloads[(sent + w) % len(payloads)]
            sent += 1
            t0 = time.perf_counter()
            error = await post(session, body)
            if error is None:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[error] = errors.get(error, 0) + 1

    t_start = time.perf_counter()
    async with session_cm() as session:
        await asyncio.gather(*(worker(session, w) for w in range(clients)))
    wall = time.perf_counter() - t_start
    lat = np.array(latencies) * 1e3
    return {
        "requests": len(latencies) + sum(errors.values()), "ok": len(latencies), "errors": sum(errors.values()),
        "error_kinds": errors, "wall_s": wall, "rps": len(latencies) / wall if wall else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
    }


async def drive_open(url: str, bodies: list[dict], rate: float, seconds: float, seed: int = 0) -> dict:
    """Open-loop load: requests arrive as a Poisson process of ``rate`` per second for
    ``seconds``, whether or not earlier ones were answered (as independent users do).

    A request's latency runs from its scheduled arrival to its answer, so time spent
    waiting because the server (or this loop) fell behind counts (no coordinated omission).
    """
    import aiohttp

    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 10)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < seconds]   # (n,) offsets in seconds
    payloads = [json.dumps(b).encode() for b in bodies]
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    late: list[float] = []   # how far behind schedule this loop sent (should stay ~0)

    async def one(session, body: bytes, due: float) -> None:
        try:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status == 200:
                    latencies.append(time.perf_counter() - due)
                else:
                    errors[f"HTTP {r.status}"] = errors.get(f"HTTP {r.status}", 0) + 1
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.perf_counter()
        tasks = []
        for j, offset in enumerate(arrivals):
            due = t0 + offset
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            late.append(max(0.0, time.perf_counter() - due))
            tasks.append(asyncio.create_task(one(session, payloads[j % len(payloads)], due)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {
        "offered_rps": rate, "sent": len(arrivals), "ok": len(latencies), "errors": sum(errors.values()),
        "error_kinds": errors, "answered_rps": len(latencies) / max(wall, 1e-9), "wall_s": wall,
        "send_late_p99_ms": float(np.percentile(np.array(late) * 1e3, 99)) if late else None,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
    }


def open_loop(url: str, bodies: list[dict], rates: list[float], seconds: float, p99_target_ms: float,
              label: str) -> list[dict]:
    """:func:`drive_open` at each rate; prints p50/p99 per rate and the highest rate whose
    p99 stays under ``p99_target_ms`` with no errors."""
    runs = []
    for rate in rates:
        run = asyncio.run(drive_open(url, bodies, rate, seconds))
        runs.append(run)
        print(f"{label:>5} open loop {rate:7.1f} req/s offered: answered {run['answered_rps']:7.1f}/s | "
              f"p50 {run['p50_ms'] or float('nan'):7.1f} ms  p99 {run['p99_ms'] or float('nan'):8.1f} ms | "
              f"errors {run['errors']} of {run['sent']} | sender late p99 {run['send_late_p99_ms']:.1f} ms",
              flush=True)
    good = [r["offered_rps"] for r in runs
            if r["p99_ms"] is not None and r["p99_ms"] < p99_target_ms and r["errors"] == 0]
    print(f"{label:>5} highest offered rate with p99 < {p99_target_ms:g} ms: "
          f"{max(good) if good else 'none of ' + str(rates)} req/s", flush=True)
    return runs


def breakdown(registry: Path, repo: Path, bodies: list[dict], n: int, batch: int = 32) -> dict[str, float]:
    """Mean ms per request of each serving stage, in this process (1 torch thread): the
    online read (``OnlineFeatures.columns``; first of the request's rows from the store,
    then from the reader's cache), the transform (``model_columns`` and the ModelInput),
    the model, the whole ``predict``; and ms per request of ``score_many`` on batches of
    ``batch`` requests, as the server scores concurrent requests (cold, then cached rows)."""
    import torch

    from dlrm.bundle import predict
    from features.transform import model_columns
    from contract.spec import ModelInput
    from serving.config import ServeConfig
    from serving.predictor import RobeflowModel
    from serving.requests import parse_v1

    torch.set_num_threads(1)
    model = RobeflowModel(ServeConfig(), registry, repo)
    model.load()
    online, spec = model.ranker.features, model.ranker.spec
    t = {"online_read_cold": 0.0, "online_read": 0.0, "transform": 0.0, "model": 0.0, "whole_predict": 0.0}
    for body in bodies[:n]:
        inst = body["instances"][0]
        t0 = time.perf_counter()
        online.columns(inst["user_id"], inst["item_ids"], inst["context"])   # rows not cached yet
        t1 = time.perf_counter()
        cols = online.columns(inst["user_id"], inst["item_ids"], inst["context"])
        t2 = time.perf_counter()
        mi = ModelInput.from_columns(model_columns(cols, len(inst["item_ids"]), spec), spec)
        t3 = time.perf_counter()
        shared = None
        if model.ranker.reads_history:   # a model with the history tower: the user's, once for all items
            values, offsets = model.ranker.histories([inst["user_id"]])
            shared = (values, offsets, np.zeros(len(inst["item_ids"]), dtype=np.int64))
        predict(model.ranker.model, mi, batch_size=len(inst["item_ids"]), histories=shared)
        t4 = time.perf_counter()
        asyncio.run(model.predict(body))
        t5 = time.perf_counter()
        for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            t[key] += dt
    out = {k: 1e3 * v / n for k, v in t.items()}
    requests = [r for body in bodies[:max(n, batch)] for r in parse_v1(body, 10_000)]
    for key in (f"batch_of_{batch}_cold", f"batch_of_{batch}"):  # the second pass finds the rows cached
        t0 = time.perf_counter()
        rounds = 0
        for start in range(0, len(requests) - batch + 1, batch):
            model.ranker.score_many(requests[start:start + batch])
            rounds += 1
        out[key] = 1e3 * (time.perf_counter() - t0) / max(1, rounds * batch)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", type=Path, help="a materialised Feast repo (default: build one under --work)")
    ap.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "serve_bench")
    ap.add_argument("--rows", type=int, default=30000, help="synthetic transactions for the built repo")
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--table-scale", type=int, default=10,
                    help="virtual table sizes = the repo's feature_spec sizes x this")
    ap.add_argument("--compression", type=float, default=1000.0, help="ROBE: full-table floats / array floats")
    ap.add_argument("--backends", default="robe,full")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0, help="load duration per bundle")
    ap.add_argument("--max-requests", type=int, default=20000, help="stop after this many requests")
    ap.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp",
                    help="HTTP client of the load generator (httpx costs far more CPU per request)")
    ap.add_argument("--warmup", type=int, default=20, help="sequential requests before measuring")
    ap.add_argument("--warm-passes", type=int, default=0,
                    help="then this many passes over every request body with 8 clients (0: none): "
                         "measures with the online reader's cache warm (the cold read is in the breakdown)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="serve.KEY=VALUE",
                    help="serve parameter for the server, e.g. serve.max_batch_requests=1 (repeatable)")
    ap.add_argument("--breakdown", type=int, default=20, help="requests timed stage by stage in process (0: skip)")
    ap.add_argument("--rates", default="",
                    help="open-loop mode: offered rates in req/s, e.g. 50,100,200,400 (Poisson arrivals for "
                         "--seconds each) instead of the closed-loop clients")
    ap.add_argument("--p99-target-ms", type=float, default=20.0,
                    help="open-loop mode: report the highest rate whose p99 stays under this")
    args = ap.parse_args()
    # kserve parses sys.argv when imported (--work would read as its --workers): it gets none
    sys.argv = sys.argv[:1]
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if any(r <= 0 for r in rates):
        raise ValueError(f"--rates {args.rates!r}: expected positive requests per second")

    import httpx

    from contract.spec import FeatureSpec

    args.work.mkdir(parents=True, exist_ok=True)
    repo = args.features or build_repo(args.work, args.rows, args.users, args.items)
    spec_path = args.work / "model_input" / "feature_spec.json"
    if args.features:
        spec_path = args.features.parent / "model_input" / "feature_spec.json"
    spec = FeatureSpec.load(spec_path)
    users = [f"u{u}" for u in range(args.users)]
    items_path = repo / "store" / "offline" / "item_attributes.parquet"
    import pandas as pd
    items = pd.read_parquet(items_path, columns=["item_id"])["item_id"].astype(str).unique().tolist()
    bodies = make_requests(users, items, 500, args.candidates)

    with tempfile.TemporaryDirectory(dir=args.work, prefix="bundles-") as tmp:
        backends = tuple(args.backends.split(","))
        bundles = make_bundles(Path(tmp), spec, args.table_scale, args.compression, backends)
        load = (f"open loop at {args.rates} req/s, {args.seconds:.0f} s each" if rates else
                f"{args.clients} clients, {args.seconds:.0f} s or {args.max_requests} requests")
        print(f"# {load} per bundle; {args.candidates} candidates per request; virtual tables {next(iter(bundles.values()))['table_rows']:,} rows; "
              f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), shared with the clients ({args.client}); server overrides {args.overrides or 'none'}")
        results = {}
        for backend in backends:
            b = bundles[backend]
            port = free_port()
            proc = start_server(b["registry"], repo, port, Path(tmp) / f"server-{backend}.log",
                                args.overrides)
            try:
                url = f"http://127.0.0.1:{port}/v1/models/robeflow:predict"
                for body in bodies[:args.warmup]:
                    httpx.post(url, json=body, timeout=60).raise_for_status()
                if args.warm_passes:
                    # every body (its user and items) through the server, over 8 connections so
                    # that each worker's online cache sees them: the measured phase reads warm rows
                    asyncio.run(drive(url, bodies, 8, 600, args.warm_passes * len(bodies)))
                server_cpu0, client_cpu0 = cpu_seconds(proc.pid), time.process_time()
                if rates:
                    runs = open_loop(url, bodies, rates, args.seconds, args.p99_target_ms, backend)
                    results[backend] = {**b, "open_loop": runs}
                    continue
                run = asyncio.run(drive(url, bodies, args.clients, args.seconds, args.max_requests, args.client))
                # CPU time per answered request: what the server and the load generator cost
                done = max(1, run["ok"])
                run["server_cpu_ms"] = 1e3 * (cpu_seconds(proc.pid) - server_cpu0) / done
                run["client_cpu_ms"] = 1e3 * (time.process_time() - client_cpu0) / done
                run["rss_mb"] = rss_bytes(proc.pid) / 1e6
            finally:
                stop_server(proc)
            if args.breakdown:
                run["breakdown_ms"] = breakdown(b["registry"], repo, bodies, args.breakdown)
            results[backend] = {**b, **run}
            print(f"{backend:>5}: bundle {b['bundle_bytes'] / 1e6:10.3f} MB (embedding "
                  f"{b['embedding_bytes'] / 1e6:.3f} MB of {b['full_bytes'] / 1e6:.1f} MB full) | "
                  f"p50 {run['p50_ms']:.1f} ms  p95 {run['p95_ms']:.1f} ms  p99 {run['p99_ms']:.1f} ms | "
                  f"{run['rps']:.1f} req/s ({run['rps'] * args.candidates:.0f} candidates/s) | "
                  f"errors {run['errors']} of {run['requests']} | server RSS {run['rss_mb']:.0f} MB | "
                  f"CPU ms/request: server {run['server_cpu_ms']:.1f}, clients {run['client_cpu_ms']:.1f}",
                  flush=True)
            if args.breakdown:
                print("       per request in process (ms): " + ", ".join(
                    f"{k} {v:.2f}" for k, v in run["breakdown_ms"].items()), flush=True)
        if "robe" in results and "full" in results:
            print(f"# bundle size ratio full/robe: {results['full']['bundle_bytes'] / results['robe']['bundle_bytes']:.0f}x"
                  f" (embedding {results['full']['embedding_bytes'] / results['robe']['embedding_bytes']:.0f}x)")
        out = args.work / "serve_bench.json"
        out.write_text(json.dumps({k: {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()}
                                   for k, v in results.items()}, indent=2))
        print(f"# figures -> {out}")


if __name__ == "__main__":
    main()
