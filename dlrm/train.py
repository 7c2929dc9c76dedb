"""The training loop: MLPerf-style (evaluate every k steps, stop at the target AUC),
per-group optimizers with warm-up/decay, resumable checkpoints.

Reproducibility: the model is initialised from ``cfg.seed``; the shuffling permutation
of epoch e is drawn from a generator seeded with ``(seed, e)``; a checkpoint stores the
step, the epoch and the position inside it, the optimizer states, the RNG states and the
history, so a resumed run takes exactly the batches the uninterrupted run would have
taken (bitwise the same weights on CPU).
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from dlrm.bundle import plain
from dlrm.configs import OptimConfig, TrainConfig
from dlrm.data import TensorData
from dlrm.metrics import auc as auc_score
from dlrm.model import DLRM
from contract.spec import FeatureSpec, ModelInput

CHECKPOINT_FORMAT = "robeflow.dlrm.checkpoint.v1"
# Config keys that may change between a checkpoint and its resumption (they do not
# change the trajectory).
RESUMABLE_CHANGES = frozenset({"progress", "checkpoint_every", "keep_checkpoints", "epochs", "device",
                               "threads"})


@dataclass
class TrainResult:
    """What a training run produced: the model and its figures."""

    model: DLRM
    steps: int
    samples: int
    epochs_completed: float
    reached_target: bool
    time_to_target_s: float | None     # wall time from the start until the target AUC was seen
    samples_to_target: int | None
    wall_s: float                      # training wall time including evaluations
    train_s: float                     # time in training steps only
    last_auc: float | None
    best_auc: float | None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    interrupted: bool = False          # stopped by ``stop_at_step`` before the end

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.train_s if self.train_s > 0 else float("nan")

    def metrics(self) -> dict[str, Any]:
        """A JSON-ready summary (no history)."""
        m = self.model
        return {
            "steps": self.steps, "samples": self.samples, "epochs": self.epochs_completed,
            "reached_target": self.reached_target, "time_to_target_s": self.time_to_target_s,
            "samples_to_target": self.samples_to_target, "wall_s": self.wall_s,
            "train_s": self.train_s, "train_samples_per_s": self.samples_per_s,
            "valid_auc": self.last_auc, "best_valid_auc": self.best_auc,
            "backend": m.config.embedding.backend, "embedding_bytes": m.embedding_bytes,
            "full_embedding_bytes": m.embedding.full_bytes, "compression": m.compression,
            "dense_parameters": sum(p.numel() for p in m.dense_parameters()),
        }


# --------------------------------------------------------------------------- optimizers

def build_optimizers(model: DLRM, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """[dense optimizer over the MLPs, embedding optimizer over the backend's parameters]."""
    dense = model.dense_parameters()
    if cfg.dense == "adam":
        opt_d: torch.optim.Optimizer = torch.optim.Adam(dense, lr=cfg.dense_lr)
    elif cfg.dense == "adagrad":
        opt_d = torch.optim.Adagrad(dense, lr=cfg.dense_lr)
    elif cfg.dense == "sgd":
        opt_d = torch.optim.SGD(dense, lr=cfg.dense_lr)
    else:
        raise ValueError(f"optim.dense = {cfg.dense!r}; expected adam, adagrad or sgd")
    emb = list(model.embedding.parameters())
    if cfg.embedding == "sgd":
        opt_e: torch.optim.Optimizer = torch.optim.SGD(emb, lr=cfg.embedding_lr)
    elif cfg.embedding == "adagrad":
        opt_e = torch.optim.Adagrad(emb, lr=cfg.embedding_lr)
    else:
        raise ValueError(f"optim.embedding = {cfg.embedding!r}; expected sgd or adagrad")
    for opt in (opt_d, opt_e):
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return [opt_d, opt_e]


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """LR multiplier at ``step`` (0-based): linear warm-up, constant, then polynomial
    (power 2) decay to 0 over ``decay_steps`` from ``decay_start_step`` (MLPerf DLRM)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay_steps > 0 and step >= cfg.decay_start_step:
        done = min(step - cfg.decay_start_step, cfg.decay_steps)
        return (1.0 - done / cfg.decay_steps) ** 2
    return 1.0


# --------------------------------------------------------------------------- helpers

def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU raises ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffling order of epoch ``epoch``: a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(num_rows, generator=g)


@torch.no_grad()
def score(model: DLRM, data: TensorData, *, batch_size: int, device: torch.device,
          bf16: bool = False) -> np.ndarray:
    """Probabilities (N,) float32 of every row of ``data``, in order."""
    was_training = model.training
    model.eval()
    out = np.empty(data.num_rows, dtype=np.float32)
    for start in range(0, data.num_rows, batch_size):
        stop = min(start + batch_size, data.num_rows)
        b = data.range_batch(start, stop).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(b.dense, b.values, b.offsets)
        out[start:stop] = torch.sigmoid(logits.float()).cpu().numpy()
    model.train(was_training)
    return out


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return plain(asdict(cfg))


# --------------------------------------------------------------------------- checkpoints

def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint of the highest step in ``ckpt_dir`` (None when there is none)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = sorted(ckpt_dir.glob("step-*.pt"))
    return found[-1] if found else None


def _save_checkpoint(ckpt_dir: Path, state: dict[str, Any], keep: int) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{state['step']:09d}.pt"
    tmp = ckpt_dir / f".{path.name}.{uuid.uuid4().hex[:8]}"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write never leaves a truncated checkpoint
    for old in sorted(ckpt_dir.glob("step-*.pt"))[:-max(keep, 1)]:
        old.unlink()
    return path


def _load_checkpoint(path: Path, cfg: TrainConfig, spec: FeatureSpec) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a robeflow checkpoint (format {state.get('format')!r})")
    old, new = state["config"], _config_dict(cfg)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ValueError(f"cannot resume from {path}: train config differs in {changed} "
                         f"(checkpoint: {[old.get(k) for k in changed]}, now: {[new.get(k) for k in changed]})")
    if state["feature_spec"] != plain(asdict(spec)):
        raise ValueError(f"cannot resume from {path}: it was trained on a different feature spec")
    return state


# --------------------------------------------------------------------------- the loop

def train_model(
    cfg: TrainConfig,
    spec: FeatureSpec,
    train: ModelInput,
    valid: ModelInput | None = None,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    stop_at_step: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Trains a DLRM on ``train``, evaluating the validation AUC on ``valid``.

    Args:
        cfg: the train config (model, optimizers, batch size, epochs, target, ...).
        spec: the feature spec of ``train`` and ``valid``.
        train, valid: the training and validation windows (``valid`` may be None when no
            target AUC is set; evaluations are then skipped).
        checkpoint_dir: where checkpoints go (``step-<n>.pt``); None = no checkpoints.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` if there is one.
        stop_at_step: stop after this global step as if the process were killed there
            (checkpoints written so far stay); the result has ``interrupted=True``.
        log: receives one-line progress messages.

    Returns:
        A TrainResult (the model is in eval mode, on the training device).
    """
    say = log or (lambda _msg: None)
    if cfg.batch_size < 1 or cfg.epochs < 1:
        raise ValueError(f"train.batch_size and train.epochs must be >= 1, got {cfg.batch_size}, {cfg.epochs}")
    if train.num_rows == 0:
        raise ValueError("the training window has no rows")
    if train.labels is None:
        raise ValueError(f"the training window has no label column {spec.label!r}")
    if cfg.target_auc is not None and (valid is None or valid.num_rows == 0):
        raise ValueError(f"train.target_auc = {cfg.target_auc} needs a validation window with rows")
    device = resolve_device(cfg.device)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    T = len(spec.sparse)

    torch.manual_seed(cfg.seed)
    model = DLRM(cfg.model, len(spec.dense), spec.table_sizes).to(device)
    optimizers = build_optimizers(model, cfg.optim)
    data = TensorData(train, T)
    vdata = TensorData(valid, T) if valid is not None and valid.num_rows else None
    if vdata is not None and cfg.eval_rows and cfg.eval_rows < vdata.num_rows:
        # a fixed random subset of the validation window, the same at every evaluation
        keep = torch.randperm(vdata.num_rows, generator=torch.Generator().manual_seed(cfg.seed))[:cfg.eval_rows]
        vdata = TensorData(_take(valid, keep.sort().values.numpy(), T), T)
    if device.type == "cuda":
        data.to(device)
        if vdata is not None:
            vdata.to(device)
    steps_per_epoch = math.ceil(data.num_rows / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every or steps_per_epoch

    st: dict[str, Any] = {"step": 0, "epoch": 0, "pos": 0, "samples": 0, "wall_s": 0.0, "train_s": 0.0,
                          "history": [], "time_to_target_s": None, "samples_to_target": None,
                          "loss_sum": 0.0, "loss_n": 0}
    if resume and checkpoint_dir is not None and (path := latest_checkpoint(checkpoint_dir)) is not None:
        saved = _load_checkpoint(path, cfg, spec)
        model.load_state_dict(saved["model"])
        for opt, sd in zip(optimizers, saved["optimizers"]):
            opt.load_state_dict(sd)
        torch.set_rng_state(saved["rng_torch"])
        if device.type == "cuda" and saved.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(saved["rng_cuda"])
        st.update({k: saved[k] for k in st})
        say(f"resumed from {path} at step {st['step']} (epoch {st['epoch']}, batch {st['pos']})")
    elif resume:
        say(f"no checkpoint in {checkpoint_dir}; starting from scratch")
    elif checkpoint_dir is not None:
        for old in Path(checkpoint_dir).glob("step-*.pt"):  # a fresh run starts a fresh series
            old.unlink()

    def checkpoint() -> None:
        if checkpoint_dir is None:
            return
        _save_checkpoint(Path(checkpoint_dir), {
            "format": CHECKPOINT_FORMAT, "config": _config_dict(cfg), "feature_spec": plain(asdict(spec)),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizers": [opt.state_dict() for opt in optimizers],
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            **st,
        }, cfg.keep_checkpoints)

    def evaluate_now() -> float:
        assert vdata is not None
        probs = score(model, vdata, batch_size=max(cfg.batch_size, 8192), device=device, bf16=use_bf16)
        return auc_score(vdata.labels.cpu().numpy(), probs)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=st["step"], disable=not cfg.progress, file=sys.stderr,
               unit="step", dynamic_ncols=True, mininterval=0.5)
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    interrupted = done = False
    t_start = time.perf_counter() - st["wall_s"]  # wall time carries over a resume
    loss_acc = torch.zeros((), device=device)      # summed on device: no sync per step
    try:
        while st["epoch"] < cfg.epochs and not done and not interrupted:
            perm = epoch_permutation(data.num_rows, cfg.seed, st["epoch"]).to(data.dense.device)
            while st["pos"] < steps_per_epoch:
                t0 = time.perf_counter()
                rows = perm[st["pos"] * cfg.batch_size:(st["pos"] + 1) * cfg.batch_size]
                b = data.batch(rows).to(device)
                factor = lr_factor(st["step"], cfg.optim)
                for opt in optimizers:
                    for g in opt.param_groups:
                        g["lr"] = g["base_lr"] * factor
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    logits = model(b.dense, b.values, b.offsets)
                loss = loss_fn(logits.float(), b.labels)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in optimizers:
                    opt.step()
                loss_acc += loss.detach()
                st["step"] += 1
                st["pos"] += 1
                st["samples"] += rows.numel()
                st["loss_n"] += 1
                if device.type == "cuda":
                    torch.cuda.synchronize()
                st["train_s"] += time.perf_counter() - t0
                bar.update(1)
                last = st["step"] == total_steps
                if vdata is not None and (st["step"] % eval_every == 0 or last):
                    st["loss_sum"] += float(loss_acc)
                    loss_acc.zero_()
                    value = evaluate_now()
                    st["wall_s"] = time.perf_counter() - t_start
                    st["history"].append({"step": st["step"], "samples": st["samples"], "wall_s": st["wall_s"],
                                          "auc": value, "loss": st["loss_sum"] / max(st["loss_n"], 1)})
                    st["loss_sum"], st["loss_n"] = 0.0, 0
                    bar.set_postfix(samples_s=f"{st['samples'] / max(st['train_s'], 1e-9):.0f}",
                                    loss=f"{st['history'][-1]['loss']:.4f}", auc=f"{value:.4f}")
                    if cfg.target_auc is not None and value >= cfg.target_auc:
                        st["time_to_target_s"], st["samples_to_target"] = st["wall_s"], st["samples"]
                        say(f"target AUC {cfg.target_auc} reached at step {st['step']}: {value:.5f}")
                        done = True
                elif st["step"] % 50 == 0 and cfg.progress:
                    bar.set_postfix(samples_s=f"{st['samples'] / max(st['train_s'], 1e-9):.0f}",
                                    loss=f"{float(loss):.4f}")
                if done:
                    break
                if st["pos"] == steps_per_epoch:
                    st["epoch"], st["pos"] = st["epoch"] + 1, 0
                    perm_done = True
                else:
                    perm_done = False
                if cfg.checkpoint_every and st["step"] % cfg.checkpoint_every == 0:
                    st["loss_sum"] += float(loss_acc)
                    loss_acc.zero_()
                    st["wall_s"] = time.perf_counter() - t_start
                    checkpoint()
                if stop_at_step is not None and st["step"] >= stop_at_step:
                    interrupted = True
                    break
                if perm_done:
                    break
    finally:
        bar.close()
    st["wall_s"] = time.perf_counter() - t_start
    if not interrupted:
        checkpoint()
    model.eval()
    aucs = [h["auc"] for h in st["history"]]
    return TrainResult(
        model=model, steps=st["step"], samples=st["samples"],
        epochs_completed=st["step"] / steps_per_epoch,
        reached_target=st["time_to_target_s"] is not None,
        time_to_target_s=st["time_to_target_s"], samples_to_target=st["samples_to_target"],
        wall_s=st["wall_s"], train_s=st["train_s"],
        last_auc=aucs[-1] if aucs else None, best_auc=max(aucs) if aucs else None,
        history=list(st["history"]), interrupted=interrupted,
    )


def _take(inputs: ModelInput, rows: np.ndarray, num_tables: int) -> ModelInput:
    """The rows ``rows`` (sorted int array) of ``inputs`` as a new ModelInput."""
    data = TensorData(inputs, num_tables)
    b = data.batch(torch.from_numpy(rows))
    return ModelInput(dense=b.dense.numpy(), sparse_values=b.values.numpy(),
                      sparse_offsets=b.offsets.numpy(),
                      labels=None if inputs.labels is None else b.labels.numpy())
