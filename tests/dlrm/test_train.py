import numpy as np
import pytest
import torch

from dlrm import predict
from dlrm.configs import EmbeddingConfig, ModelConfig, OptimConfig, TrainConfig
from dlrm.data import TensorData
from dlrm.metrics import auc
from dlrm.train import epoch_permutation, latest_checkpoint, lr_factor, train_model
from contract.spec import ModelInput


def small_cfg(backend: str = "robe", **kw) -> TrainConfig:
    model = ModelConfig(embedding=EmbeddingConfig(backend=backend, dim=8, compression=4, block=4),
                        bottom_mlp=(16,), top_mlp=(32,), interaction=kw.pop("interaction", "dot"),
                        dcn_layers=2, dcn_rank=8)
    base = dict(model=model, batch_size=128, epochs=2, eval_every=16, progress=False,
                optim=OptimConfig(dense_lr=3e-3, embedding_lr=0.1))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def windows(spec, make_frame):
    train = ModelInput.from_frame(make_frame(3000, 1), spec)
    valid_frame = make_frame(1500, 2)
    return train, ModelInput.from_frame(valid_frame, spec), valid_frame


@pytest.mark.parametrize("backend", ["robe", "full"])
def test_a_tiny_run_learns_the_planted_signal(spec, windows, backend):
    train, valid, valid_frame = windows
    result = train_model(small_cfg(backend), spec, train, valid)
    held_out = auc(valid_frame["purchased"], predict(result.model, valid))
    oracle = auc(valid_frame["purchased"], valid_frame["_prob"])
    assert held_out > 0.7, held_out              # chance is 0.5; the planted oracle ~0.88
    assert held_out < oracle + 0.01
    assert result.last_auc == pytest.approx(held_out, abs=1e-6)
    assert result.steps == 2 * 24 and result.samples == 2 * 3000
    assert [h["step"] for h in result.history] == [16, 32, 48]


def test_stops_at_the_target_auc(spec, windows):
    train, valid, _ = windows
    result = train_model(small_cfg(epochs=5, target_auc=0.6, eval_every=4), spec, train, valid)
    assert result.reached_target and result.history[-1]["auc"] >= 0.6
    assert all(h["auc"] < 0.6 for h in result.history[:-1])
    assert result.steps < 5 * 24 and result.samples_to_target == result.samples
    assert result.time_to_target_s is not None and result.time_to_target_s > 0
    unreachable = train_model(small_cfg(epochs=1, target_auc=0.999, eval_every=8), spec, train, valid)
    assert not unreachable.reached_target and unreachable.steps == 24
    assert unreachable.time_to_target_s is None


@pytest.mark.parametrize("backend,interaction", [("robe", "dot"), ("full", "dcn")])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path, spec, windows, backend, interaction):
    train, valid, _ = windows
    cfg = small_cfg(backend, interaction=interaction, checkpoint_every=10, eval_every=7,
                    optim=OptimConfig(dense="adam", embedding="adagrad", warmup_steps=5,
                                      decay_start_step=20, decay_steps=20))
    full = train_model(cfg, spec, train, valid, checkpoint_dir=tmp_path / "a")
    part = train_model(cfg, spec, train, valid, checkpoint_dir=tmp_path / "b", stop_at_step=33)
    assert part.interrupted and part.steps == 33
    assert latest_checkpoint(tmp_path / "b").name == "step-000000030.pt"  # steps 31..33 are lost
    resumed = train_model(cfg, spec, train, valid, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.steps == full.steps == 48 and resumed.samples == full.samples
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k   # bitwise
    strip = lambda hs: [(h["step"], h["samples"], h["auc"], h["loss"]) for h in hs]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    # an interrupted run that is NOT resumed differs (the test can tell the difference)
    assert not torch.equal(part.model.state_dict()[next(iter(a))], a[next(iter(a))])


def test_resume_refuses_a_changed_config(tmp_path, spec, windows):
    train, valid, _ = windows
    train_model(small_cfg(epochs=1, checkpoint_every=10), spec, train, valid, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        train_model(small_cfg(epochs=1, batch_size=64), spec, train, valid, checkpoint_dir=tmp_path, resume=True)


def test_lr_schedule_warms_up_and_decays():
    cfg = OptimConfig(warmup_steps=4, decay_start_step=10, decay_steps=10)
    f = [lr_factor(s, cfg) for s in range(25)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4:10] == [1.0] * 6
    assert f[10] == 1.0 and f[15] == pytest.approx(0.25) and f[20:] == [0.0] * 5


def test_batches_gather_the_right_bags(spec, make_frame):
    frame = make_frame(50, 4)
    data = TensorData(ModelInput.from_frame(frame, spec), len(spec.sparse))
    rows = epoch_permutation(50, seed=0, epoch=1)[:7]
    b = data.batch(rows)
    T = len(spec.sparse)
    for i, r in enumerate(rows.tolist()):
        bag = lambda t: b.values[b.offsets[i * T + t]:b.offsets[i * T + t + 1]].tolist()  # noqa: E731
        assert bag(0) == [frame["user"][r]] and bag(1) == [frame["item"][r]]
        assert bag(2) == frame["query"][r].tolist()
    assert torch.equal(b.labels, torch.tensor(frame["purchased"].to_numpy()[rows.numpy()], dtype=torch.float32))
    assert not torch.equal(epoch_permutation(50, 0, 0), epoch_permutation(50, 0, 1))
    assert torch.equal(epoch_permutation(50, 0, 1), epoch_permutation(50, 0, 1))
