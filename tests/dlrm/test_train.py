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


def test_cpu_bf16_trains_its_matmuls_in_bf16_and_learns_as_float32_does(spec, windows):
    train, valid, valid_frame = windows
    plain = train_model(small_cfg(), spec, train, valid)
    bf16 = train_model(small_cfg(cpu_bf16=True), spec, train, valid)
    w32, w16 = plain.model.top[0].weight, bf16.model.top[0].weight
    assert w16.dtype == torch.float32 and not torch.equal(w32, w16)   # fp32 weights, other rounding
    held_out = [auc(valid_frame["purchased"], predict(r.model, valid)) for r in (plain, bf16)]
    assert held_out[1] > 0.7 and abs(held_out[1] - held_out[0]) < 0.02, held_out


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_under_bf16_autocast_the_dot_products_and_the_logit_stay_float32(spec, windows, interaction):
    """bf16 keeps 8 bits: bf16 logits would tie scores (and AUC) and bf16 embeddings would
    round every dot product; the model runs those parts in float32 under autocast (DCN's
    cross layers, matmuls, stay in bf16)."""
    train, _, _ = windows
    model = train_model(small_cfg(epochs=1, interaction=interaction), spec, train, None).model
    b = TensorData(train, len(spec.sparse)).range_batch(0, 512)
    seen = {}
    model.interaction.register_forward_hook(lambda m, args, out: seen.update(dtypes=[a.dtype for a in args]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(*b.model_args())
    inner = torch.float32 if interaction == "dot" else torch.bfloat16
    assert seen["dtypes"] == [inner, inner]
    assert logits.dtype == torch.float32
    assert not torch.equal(logits, logits.bfloat16().float())   # not bf16 values in a float32 tensor
    with torch.no_grad():
        plain = model(*b.model_args())
    assert (logits - plain).abs().max() < 0.05 * plain.abs().max()   # the MLP matmuls in bf16, close


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


def test_periodic_evaluations_use_a_fixed_sample_and_the_end_the_whole_window(spec, windows):
    train, valid, valid_frame = windows
    result = train_model(small_cfg(epochs=1, eval_rows=300, eval_every=8), spec, train, valid)
    m = result.metrics()
    assert [h["step"] for h in result.history] == [8, 16, 24]
    assert m["valid_rows_per_eval"] == 300 and m["valid_rows"] == 1500
    whole = auc(valid_frame["purchased"], predict(result.model, valid))
    assert result.full_auc == pytest.approx(whole, abs=1e-6) and m["valid_auc"] == result.full_auc
    # the last periodic AUC scored the same model on 300 rows only: a different figure
    assert m["valid_sample_auc"] == result.history[-1]["auc"] != pytest.approx(whole, abs=1e-9)
    again = train_model(small_cfg(epochs=1, eval_rows=300, eval_every=8), spec, train, valid)
    assert [h["auc"] for h in again.history] == [h["auc"] for h in result.history]  # same sample
    with pytest.raises(ValueError, match="eval_rows"):
        train_model(small_cfg(eval_rows=-1), spec, train, valid)


def test_metrics_report_compression_against_nominal_and_used_rows(spec, windows):
    train, valid, _ = windows
    result = train_model(small_cfg(epochs=1), spec, train, valid)
    T = len(spec.sparse)
    seen = [set() for _ in range(T)]
    for j in range(train.num_rows * T):
        seen[j % T].update(train.sparse_values[train.sparse_offsets[j]:train.sparse_offsets[j + 1]].tolist())
    m = result.metrics()
    assert m["rows_used_per_feature"] == [len(s) for s in seen]
    assert m["rows_used"] == sum(len(s) for s in seen) < m["table_rows"] == sum(spec.table_sizes)
    emb = result.model.embedding
    assert m["compression"] == pytest.approx(sum(spec.table_sizes) * emb.dim * 4 / emb.num_bytes)
    assert m["compression_vs_used_rows"] == pytest.approx(m["rows_used"] * emb.dim * 4 / emb.num_bytes)


def test_robe_arrays_train_with_sparse_updates(spec, windows):
    from gpu_ops.robe.optim import SparseRobeOptimizer

    from dlrm.model import DLRM
    from dlrm.train import build_optimizers

    train, valid, valid_frame = windows
    model = DLRM(small_cfg().model, len(spec.dense), spec.table_sizes)
    for mode in ("sgd", "adagrad", "rowwise_adagrad"):
        opt = build_optimizers(model, OptimConfig(embedding=mode))[1]
        assert isinstance(opt, SparseRobeOptimizer) and opt.param_groups[0]["mode"] == mode
    b = TensorData(train, len(spec.sparse)).batch(torch.arange(64))
    model(b.dense, b.values, b.offsets).sum().backward()
    assert model.embedding.weight.grad.is_sparse  # no (num_floats,) gradient
    with pytest.raises(ValueError, match="rowwise_adagrad"):
        build_optimizers(DLRM(small_cfg("full").model, len(spec.dense), spec.table_sizes),
                         OptimConfig(embedding="rowwise_adagrad"))
    cfg = small_cfg(optim=OptimConfig(dense_lr=3e-3, embedding="rowwise_adagrad", embedding_lr=0.1))
    result = train_model(cfg, spec, train, valid)
    assert auc(valid_frame["purchased"], predict(result.model, valid)) > 0.7


@pytest.mark.parametrize("dense", ["adam", "adagrad", "sgd"])
def test_dense_optimizer_is_fused_and_steps_as_the_plain_one(spec, windows, dense):
    """The MLPs' optimizer runs as one fused kernel; its steps equal the plain optimizer's
    to float rounding."""
    from dlrm.model import DLRM
    from dlrm.train import build_optimizers

    train, _, _ = windows
    torch.manual_seed(0)
    model = DLRM(small_cfg().model, len(spec.dense), spec.table_sizes)
    plain = DLRM(small_cfg().model, len(spec.dense), spec.table_sizes)
    plain.load_state_dict(model.state_dict())
    opt = build_optimizers(model, OptimConfig(dense=dense, dense_lr=0.01))[0]
    assert opt.defaults["fused"]
    ref = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}[dense](
        plain.dense_parameters(), lr=0.01)
    data = TensorData(train, len(spec.sparse))
    for step in range(5):
        b = data.batch(torch.arange(step * 64, (step + 1) * 64))
        for m, o in ((model, opt), (plain, ref)):
            o.zero_grad()
            m(b.dense, b.values, b.offsets).square().mean().backward()
            o.step()
    for p, q in zip(model.dense_parameters(), plain.dense_parameters()):
        torch.testing.assert_close(p, q)


def test_checkpoints_hold_the_train_state(tmp_path, spec, windows):
    from dataclasses import asdict

    from dlrm.train import TrainState

    train, valid, _ = windows
    result = train_model(small_cfg(epochs=1, checkpoint_every=10), spec, train, valid, checkpoint_dir=tmp_path)
    saved = torch.load(latest_checkpoint(tmp_path), weights_only=True)
    state = TrainState.from_checkpoint(saved)
    assert state.step == result.steps == 24 and state.epoch == 1 and state.pos == 0
    assert state.samples == 3000 and state.history == result.history
    assert set(asdict(state)) <= set(saved)
    assert {"format", "config", "feature_spec", "model", "optimizers", "rng_torch", "rng_cuda"} <= set(saved)
