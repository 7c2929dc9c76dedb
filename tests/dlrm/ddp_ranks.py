"""Per-rank bodies of the data-parallel tests (a plain module: spawned processes import it)."""

from __future__ import annotations

from pathlib import Path

import torch

from dlrm.configs import EmbeddingConfig, ModelConfig, OptimConfig, TrainConfig
from dlrm.distributed import DataParallel
from dlrm.synthetic import PLANTED_SPEC, planted_frame
from dlrm.train import train_model
from contract.spec import ModelInput


def small_cfg(**kw) -> TrainConfig:
    model = ModelConfig(embedding=EmbeddingConfig(backend=kw.pop("backend", "robe"), dim=8,
                                                  compression=kw.pop("compression", 4), block=4),
                        bottom_mlp=(16,), top_mlp=(32,))
    base = dict(model=model, batch_size=128, epochs=2, eval_every=8, progress=False, device="cpu",
                optim=OptimConfig(dense="adam", dense_lr=3e-3, embedding="adagrad", embedding_lr=0.1))
    base.update(kw)
    return TrainConfig(**base)


def train_rank(cfg: TrainConfig, out: Path, rows: int = 1000, checkpoints: Path | None = None,
               resume: bool = False, stop_at_step: int | None = None, evaluate: bool = False) -> dict:
    """Trains on the planted rows (``evaluate``: with periodic validation, whose best weights
    rank 0 restores at the end); every rank saves its final weights to ``out/rank<r>.pt``;
    returns rank 0's figures."""
    train = ModelInput.from_frame(planted_frame(rows, 1), PLANTED_SPEC)
    valid = ModelInput.from_frame(planted_frame(600, 2), PLANTED_SPEC) if evaluate else None
    res = train_model(cfg, PLANTED_SPEC, train, valid, checkpoint_dir=checkpoints, resume=resume,
                      stop_at_step=stop_at_step)
    dp = DataParallel.current()
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.detach().clone() for k, v in res.model.state_dict().items()}},
               Path(out) / f"rank{dp.rank}.pt")
    return {"steps": res.steps, "samples": res.samples, "history": res.history, "full_auc": res.full_auc,
            "world": dp.world_size}
