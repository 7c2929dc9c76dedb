"""The training loop: MLPerf-style (evaluate every k steps, stop at the target AUC),
per-group optimizers with warm-up/decay, resumable checkpoints.

Reproducibility: the model is initialised from ``cfg.seed``; the shuffling permutation
of epoch e is drawn from a generator seeded with ``(seed, e)``; a checkpoint stores the
step, the epoch and the position inside it, the optimizer states, the RNG states and the
history, so a resumed run takes exactly the batches the uninterrupted run would have
taken (bitwise the same weights on CPU).

Data-parallel: inside processes started by :func:`dlrm.distributed.launch` every rank runs
this loop on its part of each global batch (:mod:`dlrm.distributed`); rank 0 evaluates and
writes the checkpoints.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from dlrm.bundle import plain
from dlrm.configs import OptimConfig, TrainConfig
from dlrm.data import Batch, EntityDrop, TensorData, drop_ids
from dlrm.distributed import DataParallel
from dlrm.embeddings import RobeArray
from dlrm.metrics import auc as auc_score
from dlrm.model import DLRM, history_inputs
from contract.hashing import UNSEEN, category_id
from contract.spec import FeatureSpec, ModelInput
from gpu_ops.robe.optim import MODES as ROBE_MODES
from gpu_ops.robe.optim import SparseRobeOptimizer

CHECKPOINT_FORMAT = "robeflow.dlrm.checkpoint.v1"
# Config keys that may change between a checkpoint and its resumption (they do not
# change the trajectory; ``workers`` changes only the float summation order).
RESUMABLE_CHANGES = frozenset({"progress", "checkpoint_every", "keep_checkpoints", "epochs", "device",
                               "threads", "patience", "workers"})


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
    full_auc: float | None = None      # AUC on the whole validation window at the end
    eval_s: float = 0.0                # time in periodic evaluations
    valid_rows: int = 0                # rows of the validation window
    sample_rows: int = 0               # validation rows scored by each periodic evaluation
    rows_used: list[int] = field(default_factory=list)  # distinct training ids per sparse feature
    best_step: int | None = None       # the step whose weights the model holds (best validation AUC)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.train_s if self.train_s > 0 else float("nan")

    def metrics(self) -> dict[str, Any]:
        """A JSON-ready summary (no history).

        ``valid_auc`` is the whole validation window's AUC at the end (the last periodic
        one, on the sample, when the run has no final evaluation). Compression is given
        against the nominal tables (``compression``: every row of every table, as the
        feature spec sizes them) and against the rows training used
        (``compression_vs_used_rows``: the distinct ids seen in the training window).
        """
        m = self.model
        row_bytes = m.embedding.dim * 4
        used = sum(self.rows_used)
        return {
            "steps": self.steps, "samples": self.samples, "epochs": self.epochs_completed,
            "reached_target": self.reached_target, "time_to_target_s": self.time_to_target_s,
            "samples_to_target": self.samples_to_target, "wall_s": self.wall_s,
            "train_s": self.train_s, "train_samples_per_s": self.samples_per_s, "eval_s": self.eval_s,
            "valid_auc": self.full_auc if self.full_auc is not None else self.last_auc,
            "valid_sample_auc": self.last_auc, "best_valid_auc": self.best_auc, "best_step": self.best_step,
            "valid_rows_per_eval": self.sample_rows, "valid_rows": self.valid_rows,
            "backend": m.config.embedding.backend, "embedding_bytes": m.embedding_bytes,
            "full_embedding_bytes": m.embedding.full_bytes, "compression": m.compression,
            "table_rows": sum(m.embedding.table_sizes), "rows_used": used,
            "rows_used_per_feature": list(self.rows_used),
            "used_embedding_bytes": used * row_bytes,
            "compression_vs_used_rows": used * row_bytes / m.embedding_bytes if used else None,
            "dense_parameters": sum(p.numel() for p in m.dense_parameters()),
        }


# --------------------------------------------------------------------------- optimizers

def build_optimizers(model: DLRM, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """[dense optimizer over the MLPs, embedding optimizer over the backend's parameters]."""
    dense = model.dense_parameters()
    # One fused kernel per step over all the MLP parameters instead of a few tensor ops per
    # parameter (Adam at one CPU thread: ~4x less time, the same update to float rounding).
    fused = {"fused": True} if dense and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                             for p in dense) else {}
    if cfg.dense == "adam":
        opt_d: torch.optim.Optimizer = torch.optim.Adam(dense, lr=cfg.dense_lr, **fused)
    elif cfg.dense == "adagrad":
        opt_d = torch.optim.Adagrad(dense, lr=cfg.dense_lr, **fused)
    elif cfg.dense == "sgd":
        opt_d = torch.optim.SGD(dense, lr=cfg.dense_lr, **fused)
    else:
        raise ValueError(f"optim.dense = {cfg.dense!r}; expected adam, adagrad or sgd")
    emb = list(model.embedding.parameters())
    if isinstance(model.embedding, RobeArray):
        # sparse gradients of the array, applied to the slots each batch read
        if cfg.embedding not in ROBE_MODES:
            raise ValueError(f"optim.embedding = {cfg.embedding!r}; expected one of {ROBE_MODES}")
        opt_e: torch.optim.Optimizer = SparseRobeOptimizer(emb, lr=cfg.embedding_lr, mode=cfg.embedding,
                                                           row=model.embedding.dim)
    elif cfg.embedding == "sgd":
        opt_e = torch.optim.SGD(emb, lr=cfg.embedding_lr)
    elif cfg.embedding == "adagrad":
        opt_e = torch.optim.Adagrad(emb, lr=cfg.embedding_lr)
    else:
        raise ValueError(f"optim.embedding = {cfg.embedding!r}; expected sgd or adagrad "
                         f"(rowwise_adagrad is for the robe backend)")
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
            logits = model(*b.model_args())
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


# --------------------------------------------------------------------------- run state

@dataclass
class TrainState:
    """Where a run stands. Every checkpoint stores these fields (as top-level keys, next to
    the model, optimizer and RNG states); a resumed run continues from them."""

    step: int = 0                      # global steps done
    epoch: int = 0                     # epochs completed
    pos: int = 0                       # batches done inside the current epoch
    samples: int = 0                   # training rows seen
    wall_s: float = 0.0                # wall time so far, evaluations included
    train_s: float = 0.0               # time in training steps only
    history: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    time_to_target_s: float | None = None
    samples_to_target: int | None = None
    loss_sum: float = 0.0              # training loss summed since the last evaluation ...
    loss_n: int = 0                    # ... over this many steps
    eval_s: float = 0.0                # time in periodic evaluations
    best_step: int | None = None       # step of the best periodic validation AUC so far ...
    best_auc: float | None = None      # ... that AUC
    evals_since_best: int = 0          # evaluations since then (early stopping's patience)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> "TrainState":
        """The state stored in a checkpoint (fields it lacks keep their defaults)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


@dataclass
class _Run:
    """What the loop's helpers share: the config, the model and its optimizers, the data."""

    cfg: TrainConfig
    spec: FeatureSpec
    model: DLRM
    optimizers: list[torch.optim.Optimizer]
    device: torch.device
    bf16: bool
    source: "_InMemory | _Streamed"    # the training batches, epoch by epoch
    sample: TensorData | None          # the fixed validation sample of periodic evaluations
    valid: TensorData | None           # the whole validation window (final evaluation)
    checkpoint_dir: Path | None
    say: Callable[[str], None]
    loss_fn: nn.Module = field(default_factory=nn.BCEWithLogitsLoss)
    best_model: dict[str, torch.Tensor] | None = None  # CPU copy of the best evaluation's weights
    dp: DataParallel = field(default_factory=DataParallel)  # this process's rank (a plain run: 0 of 1)
    net: nn.Module | None = None       # what the step runs forward: the model, or its DDP wrapper
    dropped: list[EntityDrop] = field(default_factory=list)  # id dropout's entities

    @property
    def total_steps(self) -> int | None:
        spe = self.source.steps_per_epoch
        return None if spe is None else self.cfg.epochs * spe

    def evaluates_after(self, step: int, last_of_epoch: bool, last_epoch: bool) -> bool:
        """Whether a periodic evaluation follows ``step``: every ``eval_every`` steps (once
        per epoch when 0), and always after the run's last step."""
        if self.sample is None:
            return False
        every = self.cfg.eval_every
        return (step % every == 0 if every else last_of_epoch) or (last_of_epoch and last_epoch)


class _InMemory:
    """A window held as tensors: each epoch a fresh permutation, cut into batches."""

    def __init__(self, data: TensorData, batch_size: int, seed: int, dp: DataParallel = DataParallel()) -> None:
        self.data, self.batch_size, self.seed, self.dp = data, batch_size, seed, dp
        self.steps_per_epoch: int | None = math.ceil(data.num_rows / batch_size)

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[Batch, int]]:
        """(this rank's part of the batch, the global batch's rows) of ``epoch`` after the first ``skip``."""
        perm = epoch_permutation(self.data.num_rows, self.seed, epoch).to(self.data.dense.device)
        for pos in range(skip, self.steps_per_epoch):
            rows = perm[pos * self.batch_size:(pos + 1) * self.batch_size]
            yield self.data.batch(self.dp.shard(rows)), rows.numel()


class _Streamed:
    """A stream of batches (e.g. :class:`dlrm.stream.CriteoStream`) with ``set_epoch``;
    the number of batches of an epoch is known only at its end."""

    steps_per_epoch: int | None = None

    def __init__(self, stream: Iterable[Batch], dp: DataParallel = DataParallel()) -> None:
        self.stream, self.dp = stream, dp
        self.empty: Batch | None = None  # a 0-row batch, for a rank whose shard ran out first

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[Batch, int]]:
        """(batch, global rows) of ``epoch`` after the first ``skip`` (read and dropped: the
        stream's order is a function of its seed and the epoch, so a resumed run sees the same
        batches). Data-parallel, each rank reads its shard of the stream; the epoch lasts
        while any rank has rows left, a rank whose shard ran out trains on an empty part."""
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)
        batches = iter(self.stream)
        pos = 0
        while True:
            batch = next(batches, None)
            rows = self.dp.gather_rows(0 if batch is None else batch.labels.numel())
            if max(rows) == 0:
                return
            if batch is None:
                if self.empty is None:
                    raise ValueError(f"rank {self.dp.rank} of {self.dp.world_size} has no training rows in "
                                     f"its shard of the stream")
                batch = self.empty
            else:
                self.empty = batch.empty()
            if pos >= skip:
                yield batch, sum(rows)
            pos += 1


def _check_inputs(cfg: TrainConfig, spec: FeatureSpec, train: ModelInput | Iterable[Batch],
                  valid: ModelInput | None) -> None:
    if cfg.batch_size < 1 or cfg.epochs < 1:
        raise ValueError(f"train.batch_size and train.epochs must be >= 1, got {cfg.batch_size}, {cfg.epochs}")
    if cfg.patience < 0:
        raise ValueError(f"train.patience = {cfg.patience}; expected 0 (no early stop) or a number of evaluations")
    if cfg.eval_rows < 0:
        raise ValueError(f"train.eval_rows = {cfg.eval_rows}; expected 0 (all) or a positive row count")
    if isinstance(train, ModelInput) and train.num_rows == 0:
        raise ValueError("the training window has no rows")
    if isinstance(train, ModelInput) and train.labels is None:
        raise ValueError(f"the training window has no label column {spec.label!r}")
    if cfg.target_auc is not None and (valid is None or valid.num_rows == 0):
        raise ValueError(f"train.target_auc = {cfg.target_auc} needs a validation window with rows")
    if history_inputs(cfg.model, spec) is not None:
        lacking = [name for name, w in (("training", train), ("validation", valid))
                   if isinstance(w, ModelInput) and not w.has_history]
        if lacking:
            raise ValueError(f"the {' and '.join(lacking)} window(s) carry no user history {spec.history.names}, "
                             f"which the history tower reads (model.history.enabled: false trains without it)")


def without_history(inputs: ModelInput) -> ModelInput:
    """``inputs`` without its user history columns (same arrays otherwise)."""
    if not inputs.has_history:
        return inputs
    return ModelInput(dense=inputs.dense, sparse_values=inputs.sparse_values, sparse_offsets=inputs.sparse_offsets,
                      labels=inputs.labels)


def id_dropout_groups(cfg: TrainConfig, spec: FeatureSpec) -> list[EntityDrop]:
    """The entities id dropout replaces: one per ``train.id_dropout_features`` the spec has
    (a Criteo spec has none of the defaults: nothing is dropped there). The features that
    belong to entity ``E`` (the id feature's name) are those whose source column is named
    ``E_*``, as the feature store's views name them (``item_brand``, ``user_offers_7d``)."""
    if not 0 <= cfg.id_dropout < 1:
        raise ValueError(f"train.id_dropout = {cfg.id_dropout}; expected 0 <= x < 1")
    if cfg.id_dropout == 0:
        return []
    index = {f.name: t for t, f in enumerate(spec.sparse)}
    named = [n for n in cfg.id_dropout_features if n in index]
    multi = [n for n in named if spec.sparse[index[n]].multi_hot]
    if multi:
        raise ValueError(f"train.id_dropout_features {multi} are multi-hot; id dropout takes single-hot features")
    sources = spec.extra.get("sources", {})
    missing = spec.extra.get("missing_token", "<missing>")
    fill = spec.extra.get("fill", {})
    drops = []
    for name in named:
        t, own = index[name], f"{name}_"
        sparse = tuple((u, category_id(f.name, missing, f.table_size)) for u, f in enumerate(spec.sparse)
                       if u != t and not f.multi_hot and str(sources.get(f.name, "")).startswith(own))
        dense = tuple((j, math.log1p(max(fill[f.name], 0.0)) if f.transform == "log1p" else float(fill[f.name]))
                      for j, f in enumerate(spec.dense) if f.name.startswith(own) and f.name in fill)
        # the user history belongs to the user: an unknown user has none (as at serving time)
        owns_history = spec.history is not None and sources.get(name, name) in ("user", "user_id")
        drops.append(EntityDrop(t, category_id(name, UNSEEN, spec.sparse[t].table_size), sparse, dense,
                                history=owns_history))
    return drops


def _validation_sample(cfg: TrainConfig, valid: ModelInput, vdata: TensorData, num_tables: int) -> TensorData:
    """A fixed random subset of ``eval_rows`` validation rows (in window order), the same at
    every periodic evaluation; the whole window when ``eval_rows`` is 0 or covers it."""
    if not cfg.eval_rows or cfg.eval_rows >= vdata.num_rows:
        return vdata
    g = torch.Generator().manual_seed(cfg.seed)
    keep = torch.randperm(vdata.num_rows, generator=g)[:cfg.eval_rows]
    return TensorData(_take(valid, keep.sort().values.numpy(), num_tables), num_tables)


def _start(run: _Run, resume: bool) -> TrainState:
    """A fresh state, or the newest checkpoint's (model, optimizers and RNG restored)."""
    ckpt_dir = run.checkpoint_dir
    path = latest_checkpoint(ckpt_dir) if resume and ckpt_dir is not None and run.dp.is_main else None
    # rank 0 reads the checkpoint and sends it to the others (no shared file system needed)
    saved = run.dp.broadcast(_load_checkpoint(path, run.cfg, run.spec) if path is not None else None)
    if saved is not None:
        run.model.load_state_dict(saved["model"])
        for opt, sd in zip(run.optimizers, saved["optimizers"]):
            opt.load_state_dict(sd)
        torch.set_rng_state(saved["rng_torch"])
        if run.device.type == "cuda" and saved.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(saved["rng_cuda"])
        state = TrainState.from_checkpoint(saved)
        run.best_model = saved.get("best_model") if run.dp.is_main else None  # rank 0 evaluates
        run.say(f"resumed from {path} at step {state.step} (epoch {state.epoch}, batch {state.pos})")
        return state
    if resume:
        run.say(f"no checkpoint in {ckpt_dir}; starting from scratch")
    elif ckpt_dir is not None and run.dp.is_main:
        for old in Path(ckpt_dir).glob("step-*.pt"):  # a fresh run starts a fresh series
            old.unlink()
    return TrainState()


def _checkpoint(run: _Run, state: TrainState) -> None:
    """Writes ``step-<n>.pt`` (nothing when the run has no checkpoint dir, or off rank 0)."""
    if run.checkpoint_dir is None or not run.dp.is_main:
        return
    _save_checkpoint(Path(run.checkpoint_dir), {
        "format": CHECKPOINT_FORMAT, "config": _config_dict(run.cfg), "feature_spec": plain(asdict(run.spec)),
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizers": [opt.state_dict() for opt in run.optimizers],
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state() if run.device.type == "cuda" else None,
        "best_model": run.best_model,
        **asdict(state),
    }, run.cfg.keep_checkpoints)


def _drop_ids(run: _Run, b: Batch, global_rows: int) -> Batch:
    """Id dropout of this rank's part: data-parallel, the part draws its rows' slice of the
    draws one process makes for the whole global batch (the random stream is skipped before
    and after it), so N workers drop the ids one process would (CPU; CUDA draws differ)."""
    k = len(run.dropped)
    if not (run.dp.parallel and k and run.cfg.id_dropout > 0):
        return drop_ids(b, run.dropped, len(run.spec.sparse), run.cfg.id_dropout)
    start, rows = run.dp.part_start(global_rows), b.labels.numel()
    torch.rand(start * k, device=b.values.device)
    b = drop_ids(b, run.dropped, len(run.spec.sparse), run.cfg.id_dropout)
    torch.rand((global_rows - start - rows) * k, device=b.values.device)
    return b


def _train_step(run: _Run, batch: Batch, step: int, global_rows: int) -> torch.Tensor:
    """One optimizer step on ``batch`` (this rank's part of a global batch of ``global_rows``);
    returns the (device) loss."""
    b = _drop_ids(run, batch.to(run.device), global_rows)
    factor = lr_factor(step, run.cfg.optim)
    for opt in run.optimizers:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        logits = run.net(*b.model_args())
    loss = run.dp.loss(logits.float(), b.labels, global_rows, run.loss_fn)
    for opt in run.optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()  # data-parallel: DDP averages the dense gradients meanwhile
    run.dp.sync_embedding_grads(run.model.embedding.parameters())
    for opt in run.optimizers:
        opt.step()
    return loss.detach()


def _auc(run: _Run, data: TensorData) -> float:
    probs = score(run.model, data, batch_size=max(run.cfg.batch_size, 8192), device=run.device, bf16=run.bf16)
    return auc_score(data.labels.cpu().numpy(), probs)


def _evaluate(run: _Run, state: TrainState, t_start: float) -> float:
    """A periodic evaluation on the validation sample, recorded in the history with the
    mean training loss since the previous one."""
    t0 = time.perf_counter()
    value = _auc(run, run.sample)
    state.eval_s += time.perf_counter() - t0
    state.wall_s = time.perf_counter() - t_start
    state.history.append({"step": state.step, "samples": state.samples, "wall_s": state.wall_s,
                          "auc": value, "loss": state.loss_sum / max(state.loss_n, 1)})
    state.loss_sum, state.loss_n = 0.0, 0
    return value


def _reached_target(run: _Run, state: TrainState, value: float) -> bool:
    """True (and the time/samples to target recorded) once the AUC reaches the target."""
    if run.cfg.target_auc is None or value < run.cfg.target_auc:
        return False
    state.time_to_target_s, state.samples_to_target = state.wall_s, state.samples
    run.say(f"target AUC {run.cfg.target_auc} reached at step {state.step}: {value:.5f}")
    return True


def _keep_best(run: _Run, state: TrainState, value: float) -> bool:
    """Keeps the weights when ``value`` is the best validation AUC so far; True once
    ``patience`` evaluations in a row did not improve on it (early stop)."""
    if state.best_auc is None or value > state.best_auc:
        state.best_auc, state.best_step, state.evals_since_best = value, state.step, 0
        run.best_model = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
        return False
    state.evals_since_best += 1
    if run.cfg.patience and state.evals_since_best >= run.cfg.patience:
        run.say(f"early stop at step {state.step}: no better validation AUC in {state.evals_since_best} "
                f"evaluations (best {state.best_auc:.5f} at step {state.best_step})")
        return True
    return False


# --------------------------------------------------------------------------- the loop

def train_model(
    cfg: TrainConfig,
    spec: FeatureSpec,
    train: ModelInput | Iterable[Batch],
    valid: ModelInput | None = None,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    stop_at_step: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Trains a DLRM on ``train``, evaluating the validation AUC on ``valid``.

    Periodic evaluations (every ``cfg.eval_every`` steps) score a fixed random sample of
    ``cfg.eval_rows`` validation rows; a run that ends (not interrupted) then scores the
    whole validation window once (``TrainResult.full_auc``).

    Args:
        cfg: the train config (model, optimizers, batch size, epochs, target, ...).
        spec: the feature spec of ``train`` and ``valid``.
        train, valid: the training and validation windows (``valid`` may be None when no
            target AUC is set; evaluations are then skipped). ``train`` may also be a stream
            of batches (:class:`dlrm.stream.CriteoStream`: read line by line, epoch by
            epoch, never held in memory).
        checkpoint_dir: where checkpoints go (``step-<n>.pt``); None = no checkpoints.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` if there is one.
        stop_at_step: stop after this global step as if the process were killed there
            (checkpoints written so far stay); the result has ``interrupted=True``.
        log: receives one-line progress messages.

    Returns:
        A TrainResult (the model is in eval mode, on the training device).
    """
    _check_inputs(cfg, spec, train, valid)
    dp = DataParallel.current()
    device = dp.device(resolve_device(cfg.device))
    T = len(spec.sparse)
    torch.manual_seed(cfg.seed)
    hist = history_inputs(cfg.model, spec)
    model = DLRM(cfg.model, len(spec.dense), spec.table_sizes, history=hist).to(device)
    if hist is None:   # a model without the tower: the windows' history columns stay on disk
        train = without_history(train) if isinstance(train, ModelInput) else train
        valid = without_history(valid) if valid is not None else None
    data = TensorData(train, T) if isinstance(train, ModelInput) else None
    vdata = TensorData(valid, T) if valid is not None and valid.num_rows else None
    sample = _validation_sample(cfg, valid, vdata, T) if vdata is not None else None
    if device.type == "cuda":
        for d in {id(x): x for x in (data, vdata, sample) if x is not None}.values():
            d.to(device)
    source = _InMemory(data, cfg.batch_size, cfg.seed, dp) if data is not None else _Streamed(train, dp)
    bf16 = (cfg.bf16 and device.type == "cuda") or (cfg.cpu_bf16 and device.type == "cpu")
    run = _Run(cfg, spec, model, build_optimizers(model, cfg.optim), device, bf16,
               source, sample, vdata, checkpoint_dir, log if log is not None and dp.is_main else (lambda _msg: None),
               dp=dp)
    run.dropped = id_dropout_groups(cfg, spec)
    if cfg.id_dropout > 0:
        run.say(f"id dropout {cfg.id_dropout:g}: " + ("; ".join(
            f"{spec.sparse[d.table].name} with {len(d.sparse)} sparse and {len(d.dense)} dense features"
            for d in run.dropped) or "no feature of the spec"))
    state = _start(run, resume)
    run.net = dp.wrap(model, model.embedding, cfg.batch_size)
    # distinct ids: of the window, or counted over a stream's first epoch (when trained whole)
    distinct = None if data is not None or state.step else _DistinctIds(T)
    rows_used = distinct_rows(data) if data is not None else []

    from tqdm import tqdm

    bar = tqdm(total=run.total_steps, initial=state.step, disable=not (cfg.progress and dp.is_main), file=sys.stderr,
               unit="step", dynamic_ncols=True, mininterval=0.5)
    model.train()
    interrupted = done = False
    t_start = time.perf_counter() - state.wall_s  # wall time carries over a resume
    loss_acc = torch.zeros((), device=device)      # summed on device: no sync per step
    try:
        while state.epoch < cfg.epochs and not done and not interrupted:
            batches = source.epoch(state.epoch, state.pos)
            t0 = time.perf_counter()
            item = next(batches, None)
            while item is not None:
                batch, global_rows = item
                loss = _train_step(run, batch, state.step, global_rows)
                loss_acc += loss
                if distinct is not None and state.epoch == 0:
                    distinct.add(batch)
                state.step += 1
                state.pos += 1
                state.samples += global_rows
                state.loss_n += 1
                item = next(batches, None)  # look ahead: was this the epoch's last batch?
                last_of_epoch = item is None
                if device.type == "cuda":
                    torch.cuda.synchronize()
                state.train_s += time.perf_counter() - t0
                bar.update(1)
                if run.evaluates_after(state.step, last_of_epoch, state.epoch == cfg.epochs - 1):
                    state.loss_sum += float(loss_acc)
                    loss_acc.zero_()
                    if dp.is_main:
                        value = _evaluate(run, state, t_start)
                        bar.set_postfix(samples_s=f"{state.samples / max(state.train_s, 1e-9):.0f}",
                                        loss=f"{state.history[-1]['loss']:.4f}", auc=f"{value:.4f}")
                        done = _reached_target(run, state, value)
                        done = _keep_best(run, state, value) or done
                    done = dp.broadcast(done)  # rank 0 decides; the others wait here
                elif state.step % 50 == 0 and cfg.progress:
                    bar.set_postfix(samples_s=f"{state.samples / max(state.train_s, 1e-9):.0f}",
                                    loss=f"{float(loss):.4f}")
                if done:
                    break
                if last_of_epoch:
                    state.epoch, state.pos = state.epoch + 1, 0
                    if distinct is not None and state.epoch == 1:
                        rows_used = distinct.counts()
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    state.loss_sum += float(loss_acc)
                    loss_acc.zero_()
                    state.wall_s = time.perf_counter() - t_start
                    _checkpoint(run, state)
                if stop_at_step is not None and state.step >= stop_at_step:
                    interrupted = True
                    break
                t0 = time.perf_counter()
            if state.step == 0:
                raise ValueError("the training stream yielded no batches")
    finally:
        bar.close()
    state.wall_s = time.perf_counter() - t_start
    if not interrupted:
        _checkpoint(run, state)
    best_step = state.step
    if not interrupted and run.best_model is not None and state.best_step != state.step:
        # the model ends with the best evaluation's weights (the checkpoint keeps the last)
        model.load_state_dict(run.best_model)
        best_step = state.best_step
    full_auc = None
    if not interrupted and vdata is not None and dp.is_main:
        # the whole window once at the end (the periodic AUCs are on the sample)
        if sample is vdata and state.history:
            full_auc = state.best_auc if best_step == state.best_step else state.history[-1]["auc"]
        else:
            full_auc = _auc(run, vdata)
    model.eval()
    aucs = [h["auc"] for h in state.history]
    return TrainResult(
        model=model, steps=state.step, samples=state.samples,
        epochs_completed=(state.step / source.steps_per_epoch if source.steps_per_epoch
                          else state.epoch + (0.0 if state.pos == 0 else float("nan"))),
        reached_target=state.time_to_target_s is not None,
        time_to_target_s=state.time_to_target_s, samples_to_target=state.samples_to_target,
        wall_s=state.wall_s, train_s=state.train_s,
        last_auc=aucs[-1] if aucs else None, best_auc=max(aucs) if aucs else None,
        history=list(state.history), interrupted=interrupted, full_auc=full_auc,
        eval_s=state.eval_s, valid_rows=vdata.num_rows if vdata is not None else 0,
        sample_rows=sample.num_rows if sample is not None else 0, rows_used=rows_used,
        best_step=best_step,
    )


class _DistinctIds:
    """Distinct ids per sparse feature over a stream of batches, merged every few batches
    (memory: the distinct ids, not the stream)."""

    def __init__(self, num_tables: int, merge_every: int = 64) -> None:
        self.T, self.merge_every = num_tables, merge_every
        self.seen = torch.empty(0, dtype=torch.int64)
        self.pending: list[torch.Tensor] = []

    def add(self, b: Batch) -> None:
        table = torch.repeat_interleave(torch.arange(b.offsets.numel() - 1) % self.T, b.offsets.diff().cpu(),
                                        output_size=b.values.numel())  # (nnz,)
        self.pending.append(torch.unique(b.values.cpu() * self.T + table))
        if len(self.pending) >= self.merge_every:
            self._merge()

    def _merge(self) -> None:
        self.seen = torch.unique(torch.cat([self.seen, *self.pending]))
        self.pending = []

    def counts(self) -> list[int]:
        self._merge()
        return torch.bincount(self.seen % self.T, minlength=self.T).tolist()


def distinct_rows(data: TensorData) -> list[int]:
    """Distinct ids of each sparse feature in ``data`` (the table rows training can touch)."""
    T = data.num_tables
    if data.single_hot:
        ids = data.values.view(-1, T)
        return [int(torch.unique(ids[:, t]).numel()) for t in range(T)]
    table = torch.repeat_interleave(torch.arange(data.lengths.numel(), device=data.values.device) % T,
                                    data.lengths.reshape(-1), output_size=data.values.numel())  # (nnz,)
    key = data.values * T + table  # (nnz,) distinct (id, table) pairs
    uniq = torch.unique(key)
    return torch.bincount(uniq % T, minlength=T).tolist()


def _take(inputs: ModelInput, rows: np.ndarray, num_tables: int) -> ModelInput:
    """The rows ``rows`` (sorted int array) of ``inputs`` as a new ModelInput."""
    data = TensorData(inputs, num_tables)
    b = data.batch(torch.from_numpy(rows))
    return ModelInput(dense=b.dense.numpy(), sparse_values=b.values.numpy(),
                      sparse_offsets=b.offsets.numpy(),
                      labels=None if inputs.labels is None else b.labels.numpy(),
                      history_values=None if b.history is None else b.history.numpy(),
                      history_offsets=None if b.history_offsets is None else b.history_offsets.numpy())
