"""Training samples/s and AUC of the Criteo-Kaggle-shaped DLRM at one thread: this checkout
against a baseline checkout of the training code, measured in the same run.

Model: dim 16, bottom MLP 13-512-256-64-16, dot interaction (367 features), top MLP
367-512-256-1, ROBE 1000x (tables of ``--table-size`` rows), Adam over the MLPs and Adagrad
over the ROBE array, batch 1024 by default.

Both codes train one epoch on the same Criteo-format rows (the last ``--valid-fraction``
of the rows held out), each run in its own process through the code's own
``dlrm.train.train_model``, with the same config; the variants run interleaved in rounds
(base, current, base, current, ...), so load from other processes on a shared machine hits
all of them alike. Samples/s is ``TrainResult.samples / train_s`` (the time in training
steps, batch building included, evaluation excluded); AUC is the whole held-out window's, and
each variant's AUC minus base's of the same round is printed with its paired bootstrap 95%
interval.

    git worktree add --detach /tmp/base <commit>
    robeflow generate --format criteo --out data/criteo --truth data/criteo_truth -S generate.rows=500000
    .venv/bin/python benchmarks/kaggle_bench.py --criteo data/criteo --base /tmp/base --rounds 3

``--variants`` picks what runs besides ``base`` (``current``: the training code as it is,
copied at the start; ``current-b2048``: the same with batch 2048; ``current-bf16``: with
``train.cpu_bf16``, bf16 autocast on the CPU). ``--clock cpu`` (the
default) times the steps by each process's CPU time: at one thread, the single-core time,
which other processes on a shared machine disturb far less than wall time.

``--profile`` instead profiles ``--steps`` training steps of this checkout with
``torch.profiler`` and prints where a step's time goes by part (batch building, MLPs,
interaction, ROBE lookup and backward, both optimizers), the MLP matmuls' achieved GFLOP/s
against the core's FP32 FMA peak (``--peak-gflops``, 78 for this AVX2 core) and the bound
they set. ``--step-variants`` compares, in one process and alternating, this checkout's step
with the MLPs run layer by layer through autograd, with the MLPs and the interaction through
``torch.compile`` (compile time reported, not timed), under bf16 autocast, and at other batch sizes.

    .venv/bin/python benchmarks/kaggle_bench.py --criteo data/criteo --profile --steps 20
    .venv/bin/python benchmarks/kaggle_bench.py --criteo data/criteo --step-variants --rounds 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PACKAGES = ("contract", "dlrm", "features", "gpu_ops")   # what a training run imports
BOTTOM, TOP, DIM = (512, 256, 64), (512, 256), 16


# --------------------------------------------------------------------------- data

def prepare(criteo: Path, table_size: int, rows: int, out: Path) -> Path:
    """The Criteo rows as model-ready arrays in ``out/kaggle_data.npz`` (dense (N, 13),
    ids (N, 26), labels (N,)), read once with this checkout's reader."""
    import pandas as pd

    from features.criteo import criteo_model_frame, read_criteo

    files = sorted(p for p in criteo.iterdir() if p.suffix in (".tsv", ".gz", ".txt")) if criteo.is_dir() else [criteo]
    if not files:
        raise ValueError(f"no Criteo parts (*.tsv) in {criteo}")
    raw = pd.concat([read_criteo(f) for f in files], ignore_index=True)
    if rows:
        raw = raw.iloc[:rows]
    frame, spec = criteo_model_frame(raw, table_size)
    dense = frame[[f.name for f in spec.dense]].to_numpy(np.float32)
    ids = frame[[f.name for f in spec.sparse]].to_numpy(np.int64)
    path = out / "kaggle_data.npz"
    np.savez(path, dense=dense, ids=ids, labels=frame["label"].to_numpy(np.float32))
    return path


# --------------------------------------------------------------------------- one run (child)

def child(args: argparse.Namespace) -> None:
    """One epoch of the code on ``sys.path`` (PYTHONPATH picks the checkout); prints JSON."""
    import torch

    torch.set_num_threads(args.threads)
    import dlrm
    from dlrm import configs
    from dlrm.train import train_model

    root = Path(dlrm.__file__).resolve().parent.parent
    if (root / "contract" / "spec.py").exists():   # the reader/spec modules moved over time
        from contract.spec import ModelInput
        from features.criteo import criteo_spec
    else:
        from dlrm.data import criteo_spec
        from features.spec import ModelInput
    if args.clock == "cpu":   # train_model times its steps with perf_counter: make that this process's CPU time
        time.perf_counter = time.process_time
    z = np.load(args.data)
    n = len(z["labels"])
    cut = n - max(1, round(n * args.valid_fraction))
    T = z["ids"].shape[1]

    def window(lo: int, hi: int) -> "ModelInput":
        return ModelInput(dense=z["dense"][lo:hi], sparse_values=z["ids"][lo:hi].reshape(-1),
                          sparse_offsets=np.arange((hi - lo) * T + 1, dtype=np.int64), labels=z["labels"][lo:hi])

    spec = criteo_spec(args.table_size)
    model = configs.ModelConfig(embedding=configs.EmbeddingConfig(backend="robe", dim=DIM, compression=1000.0),
                                bottom_mlp=BOTTOM, top_mlp=TOP, interaction="dot")
    optim = configs.OptimConfig(dense="adam", dense_lr=1e-3, embedding="adagrad", embedding_lr=args.embedding_lr)
    kw = dict(model=model, optim=optim, batch_size=args.batch, epochs=1, eval_every=0, eval_rows=0,
              checkpoint_every=0, seed=0, device="cpu", threads=args.threads, progress=False)
    fields = {f for f in configs.TrainConfig.__dataclass_fields__}
    for k, v in (("patience", 0), ("id_dropout", 0.0), ("workers", 1), ("stream", False),
                 ("cpu_bf16", args.cpu_bf16)):
        if k in fields:
            kw[k] = v
    cfg = configs.TrainConfig(**kw)
    t0 = time.time()
    res = train_model(cfg, spec, window(0, cut), window(cut, n))
    wall = time.time() - t0
    auc = res.full_auc if getattr(res, "full_auc", None) is not None else res.last_auc
    if args.probs:   # the held-out window's probabilities, for the paired comparison of AUCs
        from dlrm.data import TensorData
        from dlrm.train import score

        probs = score(res.model, TensorData(window(cut, n), T), batch_size=8192, device=torch.device("cpu"),
                      **({"bf16": True} if args.cpu_bf16 else {}))
        np.save(args.probs, probs)
    print(json.dumps({"code": str(Path(dlrm.__file__).parent.parent), "samples": res.samples, "steps": res.steps,
                      "train_s": res.train_s, "samples_per_s": res.samples / res.train_s, "auc": auc,
                      "wall_s": wall}))


def paired_aucs(work: Path, names: list[str], rounds: int, labels: np.ndarray) -> None:
    """Each variant's AUC minus base's on the same held-out rows, round by round, with the
    paired bootstrap 95% interval (the same resampled rows for both in every resample)."""
    from dlrm.metrics import paired_auc_difference

    print(f"\nAUC - base's on the same {len(labels)} held-out rows (paired bootstrap 95% interval, 1000 resamples):")
    for v in names:
        if v == "base":
            continue
        for r in range(rounds):
            d = paired_auc_difference(labels, np.load(work / f"probs-{v}-{r}.npy"),
                                      np.load(work / f"probs-base-{r}.npy"), seed=r)
            print(f"  round {r + 1} {v:<16} {d['diff']:+.5f} [{d['lo']:+.5f}, {d['hi']:+.5f}]")


# --------------------------------------------------------------------------- where a step's time goes

def mlp_flops(num_dense: int, top_in: int) -> int:
    """FP32 FLOPs of the two MLPs' matmuls per sample and training step: forward, the weight
    gradients, and the input gradients of every layer but the first bottom one (its input,
    the dense features, needs none)."""
    widths = [(num_dense, BOTTOM[0]), *zip(BOTTOM, (*BOTTOM[1:], DIM)), (top_in, TOP[0]),
              *zip(TOP, (*TOP[1:], 1))]
    macs = sum(a * b for a, b in widths)
    return 2 * (3 * macs - num_dense * BOTTOM[0])


class Steps:
    """Training steps of this checkout's model on the prepared rows, as the training loop
    takes them (batch gather, forward, loss, backward, both optimizers)."""

    def __init__(self, args: argparse.Namespace, z: dict, batch: int, *, layerwise_mlp: bool = False,
                 compiled: bool = False, bf16: bool = False) -> None:
        import types

        import torch
        from torch.profiler import record_function

        from contract.spec import ModelInput
        from dlrm import configs
        from dlrm.data import TensorData
        from dlrm.model import DLRM
        from dlrm.train import build_optimizers

        n, T = z["ids"].shape
        self.n, self.B, self.record = n, batch, record_function
        self.data = TensorData(ModelInput(dense=z["dense"], sparse_values=z["ids"].reshape(-1),
                                          sparse_offsets=np.arange(n * T + 1, dtype=np.int64), labels=z["labels"]), T)
        torch.manual_seed(0)
        cfg = configs.ModelConfig(embedding=configs.EmbeddingConfig(backend="robe", dim=DIM, compression=1000.0),
                                  bottom_mlp=BOTTOM, top_mlp=TOP, interaction="dot")
        self.model = DLRM(cfg, z["dense"].shape[1], [args.table_size] * T)
        self.opts = build_optimizers(self.model, configs.OptimConfig(dense="adam", embedding="adagrad",
                                                                     embedding_lr=args.embedding_lr))
        if layerwise_mlp:  # the MLPs' layers one by one through autograd (not one node)
            for m in (self.model.bottom, self.model.top):
                m.forward = types.MethodType(torch.nn.Sequential.forward, m)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        self.compile_s = 0.0
        self.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # bf16 matmuls, fp32 weights
        if compiled:  # the dense part through torch.compile (inductor); the ROBE lookup stays eager
            for name in ("bottom", "interaction", "top"):
                setattr(self.model, name, torch.compile(getattr(self.model, name)))
            t0 = time.perf_counter()
            self(0)
            self.compile_s = time.perf_counter() - t0

    def __call__(self, i: int) -> None:
        B, n = self.B, self.n
        with self.record("data"):
            b = self.data.batch(self.perm[(i * B) % (n - B):(i * B) % (n - B) + B])
        with self.autocast():
            logits = self.model(b.dense, b.values, b.offsets)
        loss = self.loss_fn(logits.float(), b.labels)
        with self.record("zero_grad"):
            for o in self.opts:
                o.zero_grad(set_to_none=True)
        with self.record("backward"):
            loss.backward()
        for o in self.opts:
            o.step()


def load_rows(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="kaggle_bench_"))
    z = np.load(prepare(Path(args.criteo), args.table_size, args.rows or 200_000, work))
    return {k: z[k] for k in z.files}


def step_variants(args: argparse.Namespace) -> None:
    """Step variants of this checkout in one process, alternating in rounds; samples/s by
    this process's CPU time (one thread)."""
    import torch

    torch.set_num_threads(args.threads)
    z = load_rows(args)
    variants = {
        f"b{args.batch}": Steps(args, z, args.batch),
        f"b{args.batch} layer-by-layer MLP": Steps(args, z, args.batch, layerwise_mlp=True),
        f"b{args.batch} torch.compile": Steps(args, z, args.batch, compiled=True),
        f"b{args.batch} bf16 autocast": Steps(args, z, args.batch, bf16=True),
        **{f"b{b}": Steps(args, z, b) for b in (512, 2048, 4096) if b != args.batch},
    }
    print(f"# step variants, {torch.get_num_threads()} thread(s), {args.rounds} rounds of ~{args.steps} steps "
          f"at batch {args.batch}; torch.compile took {variants[f'b{args.batch} torch.compile'].compile_s:.0f}s "
          f"(excluded); load {os.getloadavg()[0]:.2f}", flush=True)
    for v in variants.values():
        for i in range(3):
            v(i)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:  # each round starts at the next variant
            v = variants[k]
            steps = max(1, args.steps * args.batch // v.B)
            t0 = time.process_time()
            for i in range(steps):
                v(i)
            rates[k].append(steps * v.B / (time.process_time() - t0))
    ref = statistics.median(rates[f"b{args.batch}"])
    print(f"{'variant':<32} {'median samples/s':>17} {'min':>8} {'max':>8} {'vs b' + str(args.batch):>9}")
    for k, r in rates.items():
        print(f"{k:<32} {statistics.median(r):>17.0f} {min(r):>8.0f} {max(r):>8.0f} "
              f"{statistics.median(r) / ref:>8.2f}x")


def profile(args: argparse.Namespace) -> None:
    """Profiles ``--steps`` training steps of this checkout's model at ``--threads`` and prints
    the time per step by part, and the MLP part's GFLOP/s against ``--peak-gflops``."""
    import torch
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(args.threads)
    z = load_rows(args)
    step = Steps(args, z, args.batch)
    model, B = step.model, args.batch
    ranges = {}

    def scoped(module: torch.nn.Module, name: str) -> None:  # forward of a submodule as one range
        module.register_forward_pre_hook(lambda *_: ranges.__setitem__(name, record_function(f"fwd:{name}").__enter__()))
        module.register_forward_hook(lambda *_: ranges.pop(name).__exit__(None, None, None))

    for name in ("bottom", "embedding", "interaction", "top"):
        scoped(getattr(model, name), name)

    for i in range(5):
        step(i)
    t0 = time.process_time()
    for i in range(args.steps):
        step(i)
    step_s = (time.process_time() - t0) / args.steps
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.steps):
            step(i)
    ev = {e.key: e for e in prof.key_averages()}
    per = lambda key, attr="cpu_time_total": getattr(ev[key], attr) / args.steps / 1e3 if key in ev else 0.0
    bwd = {}
    for key, e in ev.items():
        if key.startswith("autograd::engine::evaluate_function: "):
            node = key.split(": ", 1)[1]
            part = ("mlp" if node.startswith(("_MLPFunction", "Addmm", "Mm", "T", "Relu", "Threshold",
                                              "AccumulateGrad"))
                    else "interaction" if node.startswith(("_DotPairs", "Bmm", "Cat", "IndexSelect"))
                    else "embedding" if "Robe" in node else "loss and other")
            bwd[part] = bwd.get(part, 0.0) + e.cpu_time_total / args.steps / 1e3
    parts = [
        ("batch building (TensorData.batch)", per("data")),
        ("bottom MLP forward", per("fwd:bottom")), ("top MLP forward", per("fwd:top")),
        ("MLP backward (matmuls, ReLU, bias)", bwd.get("mlp", 0.0)),
        ("interaction forward", per("fwd:interaction")), ("interaction backward", bwd.get("interaction", 0.0)),
        ("ROBE lookup", per("fwd:embedding")), ("ROBE backward (slot gradients)", bwd.get("embedding", 0.0)),
        ("Adam over the MLPs", per("Optimizer.step#Adam.step")),
        ("ROBE sparse Adagrad", per("Optimizer.step#SparseRobeOptimizer.step")),
        ("zero_grad", per("zero_grad")), ("loss and other backward", bwd.get("loss and other", 0.0)),
    ]
    profiled = sum(v for _, v in parts)
    cpu_ms = step_s * 1e3
    scale = cpu_ms / profiled  # the profiler's times are wall times: on a busy machine, scaled to CPU time
    mm = sum(per(k, "self_cpu_time_total") for k in ("aten::mm", "aten::addmm")) * scale
    mlp_part = (per("fwd:bottom") + per("fwd:top") + bwd.get("mlp", 0.0)) * scale
    flops = mlp_flops(z["dense"].shape[1], model.top[0].in_features) * B
    print(f"# one training step, batch {B}, {torch.get_num_threads()} thread(s), {args.steps} steps profiled; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"step without the profiler: {cpu_ms:.1f} ms CPU time ({B / step_s:.0f} samples/s); parts as "
          f"shares of the profiled step, in ms of that CPU time:")
    for name, v in parts:
        print(f"  {name:<38} {v * scale:7.2f} ms  {100 * v / profiled:5.1f}%")
    print(f"MLP matmuls: {flops / 1e9:.2f} GFLOP a step in {mm:.1f} ms = {flops / mm / 1e6:.1f} GFLOP/s "
          f"({100 * flops / mm / 1e6 / args.peak_gflops:.0f}% of the {args.peak_gflops:g} GFLOP/s peak); the whole "
          f"MLP part (with ReLU, bias, autograd) {mlp_part:.1f} ms = {flops / mlp_part / 1e6:.1f} GFLOP/s "
          f"({100 * flops / mlp_part / 1e6 / args.peak_gflops:.0f}%)")
    print(f"bound: the MLP matmuls alone at peak take {flops / args.peak_gflops / 1e6:.1f} ms a step "
          f"({B / (flops / args.peak_gflops / 1e9):.0f} samples/s, with everything else free)")
    if args.table:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


# --------------------------------------------------------------------------- the comparison

VARIANTS = {  # name -> (checkout: base | current, extra child args)
    "base": ("base", []),
    "current": ("current", []),
    "current-b2048": ("current", ["--batch", "2048"]),
    "current-bf16": ("current", ["--cpu-bf16"]),   # train.cpu_bf16: bf16 autocast on this CPU
}


def compare(args: argparse.Namespace) -> None:
    names = args.variants.split(",")
    for v in names:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; expected one of {sorted(VARIANTS)}")
    if "base" in names and args.base is None:
        raise SystemExit("--base (a checkout of the baseline commit) is needed for the base variant")
    work = Path(tempfile.mkdtemp(prefix="kaggle_bench_"))
    # the current code as it is now (a copy: edits while the rounds run do not mix in)
    snap = work / "current"
    for pkg in PACKAGES:
        shutil.copytree(HERE.parent / pkg, snap / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    roots = {"current": snap, "base": Path(args.base).resolve() if args.base else None}
    t0 = time.perf_counter()
    data = prepare(Path(args.criteo), args.table_size, args.rows, work)
    n = len(np.load(data)["labels"])
    print(f"# Criteo-Kaggle DLRM (bottom 13-{'-'.join(map(str, BOTTOM))}-{DIM}, top 367-{'-'.join(map(str, TOP))}-1), "
          f"ROBE 1000x, {args.threads} thread(s), batch {args.batch}, one epoch of "
          f"{n - max(1, round(n * args.valid_fraction))} rows, {args.rounds} rounds; data read in "
          f"{time.perf_counter() - t0:.0f}s")
    print(f"# base: {roots['base']}   {args.clock} clock   load: {os.getloadavg()[0]:.2f} (1-min average at the "
          f"start)", flush=True)
    results: dict[str, list[dict]] = {v: [] for v in names}
    for r in range(args.rounds):
        for v in names:
            code, extra = VARIANTS[v]
            env = {**os.environ, "PYTHONPATH": str(roots[code]), "OMP_NUM_THREADS": str(args.threads)}
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--data", str(data),
                   "--threads", str(args.threads), "--table-size", str(args.table_size),
                   "--valid-fraction", str(args.valid_fraction), "--embedding-lr", str(args.embedding_lr),
                   "--batch", str(args.batch), "--clock", args.clock, *extra]
            probs = work / f"probs-{v}-{r}.npy"
            cmd += ["--probs", str(probs)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(roots[code]))
            if out.returncode:
                raise SystemExit(f"{v} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[v].append(res)
            print(f"round {r + 1} {v:<16} {res['samples_per_s']:8.0f} samples/s  train {res['train_s']:6.1f}s  "
                  f"(run wall {res['wall_s']:5.1f}s)  AUC {res['auc']:.5f}  load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\n{'variant':<16} {'median samples/s':>17} {'min':>8} {'max':>8} {'AUC':>9} {'vs base (median)':>17}")
    med = {v: statistics.median(x["samples_per_s"] for x in results[v]) for v in names}
    for v in names:
        s = [x["samples_per_s"] for x in results[v]]
        aucs = sorted({round(x["auc"], 5) for x in results[v]})
        ratio = f"{med[v] / med['base']:.2f}x" if "base" in med else "-"
        print(f"{v:<16} {med[v]:>17.0f} {min(s):>8.0f} {max(s):>8.0f} {'/'.join(f'{a:.5f}' for a in aucs):>9} "
              f"{ratio:>17}")
    if "base" in names:
        for v in names:
            if v != "base":
                per = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(results[v], results["base"])]
                print(f"{v} / base per round: {', '.join(f'{p:.2f}x' for p in per)}")
        paired_aucs(work, names, args.rounds, np.load(data)["labels"][-len(np.load(work / "probs-base-0.npy")):])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--criteo", help="Criteo TSV file or folder of parts")
    p.add_argument("--base", help="checkout (e.g. a git worktree) of the baseline training code")
    p.add_argument("--variants", default="base,current", help=f"comma-separated, of {sorted(VARIANTS)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", type=int, default=0, help="use the first N rows (0 = all)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--cpu-bf16", action="store_true", help="child: train with train.cpu_bf16 (bf16 autocast on the CPU)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table-size", type=int, default=1_000_000, help="rows per Criteo table (hashed ids)")
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--embedding-lr", type=float, default=0.05)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="time the training steps by this process's CPU time (steadier on a shared machine; "
                        "at one thread the single-core time) or by wall time")
    p.add_argument("--json", help="write every run's figures here")
    p.add_argument("--profile", action="store_true", help="profile training steps of this checkout instead")
    p.add_argument("--step-variants", action="store_true",
                   help="compare step variants of this checkout in one process instead (layer-by-layer MLP, "
                        "torch.compile, batch sizes)")
    p.add_argument("--steps", type=int, default=20, help="--profile: steps profiled")
    p.add_argument("--peak-gflops", type=float, default=78.0, help="the core's FP32 FMA peak")
    p.add_argument("--table", action="store_true", help="--profile: also print the profiler's op table")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--probs", help=argparse.SUPPRESS)   # child: save the held-out probabilities here
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if not args.criteo:
        p.error("--criteo is required")
    if args.profile:
        profile(args)
    elif args.step_variants:
        step_variants(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
