"""Best-epoch training: the model that comes back holds the weights of the best validation
AUC, and early stopping ends a run ``patience`` evaluations after it."""

import pytest
import torch

from dlrm import predict
from dlrm.configs import EmbeddingConfig, ModelConfig, OptimConfig, TrainConfig
from dlrm.metrics import auc
from dlrm.train import train_model
from contract.spec import ModelInput


def overfitting_cfg(backend: str, **kw) -> TrainConfig:
    """Big tables, a high learning rate and a tiny training window: validation AUC peaks
    early and then falls as the ids are memorised."""
    model = ModelConfig(embedding=EmbeddingConfig(backend=backend, dim=8, compression=2, block=4),
                        bottom_mlp=(16,), top_mlp=(32,))
    base = dict(model=model, batch_size=32, epochs=8, eval_every=5, progress=False,
                optim=OptimConfig(dense_lr=1e-2, embedding_lr=0.5))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def small_windows(spec, make_frame):
    train = ModelInput.from_frame(make_frame(320, 11), spec)
    valid_frame = make_frame(800, 12)
    return train, ModelInput.from_frame(valid_frame, spec), valid_frame


@pytest.mark.parametrize("backend", ["robe", pytest.param("full", marks=pytest.mark.slow)])
def test_the_returned_model_is_the_best_evaluation_and_patience_stops_the_run(spec, small_windows, backend):
    train, valid, frame = small_windows
    full_run = train_model(overfitting_cfg(backend), spec, train, valid)
    aucs = [h["auc"] for h in full_run.history]
    best = max(range(len(aucs)), key=lambda k: (aucs[k], -k))  # the first evaluation of the highest AUC
    assert aucs[-1] < aucs[best] - 0.005, aucs  # the setting overfits: the last weights are worse
    # the model returned holds the best evaluation's weights, and says which step that was
    assert full_run.best_step == full_run.history[best]["step"] < full_run.steps
    held_out = auc(frame["purchased"], predict(full_run.model, valid))
    assert held_out == pytest.approx(aucs[best], abs=1e-6)
    assert full_run.full_auc == pytest.approx(aucs[best], abs=1e-6)
    m = full_run.metrics()
    assert m["best_step"] == full_run.best_step and m["best_valid_auc"] == pytest.approx(aucs[best])
    assert m["valid_auc"] == pytest.approx(aucs[best], abs=1e-6)

    # early stopping: the same trajectory, cut at the first evaluation that is the
    # `patience`-th in a row without a better AUC
    patience = 2
    best_so_far, since, cut = aucs[0], 0, len(aucs) - 1
    for k in range(1, len(aucs)):
        since = 0 if aucs[k] > best_so_far else since + 1
        best_so_far = max(best_so_far, aucs[k])
        if since >= patience:
            cut = k
            break
    assert cut < len(aucs) - 1  # the run does stop early
    stopped = train_model(overfitting_cfg(backend, patience=patience), spec, train, valid)
    assert [h["auc"] for h in stopped.history] == pytest.approx(aucs[:cut + 1])
    assert stopped.steps == full_run.history[cut]["step"]
    kept = max(range(cut + 1), key=lambda k: (aucs[k], -k))
    assert stopped.best_step == full_run.history[kept]["step"]
    assert auc(frame["purchased"], predict(stopped.model, valid)) == pytest.approx(aucs[kept], abs=1e-6)


def test_patience_must_not_be_negative(spec, small_windows):
    train, valid, _ = small_windows
    with pytest.raises(ValueError, match="train.patience"):
        train_model(overfitting_cfg("full", patience=-1), spec, train, valid)
