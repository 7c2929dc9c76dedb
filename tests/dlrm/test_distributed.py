"""Data-parallel training (dlrm/distributed.py): 2 gloo processes on CPU against one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.spec import ModelInput
from dlrm.bundle import predict
from dlrm.distributed import DataParallel, dense_exchange, env_world, launch, merge_sorted_slots
from dlrm.embeddings import RobeArray
from dlrm.metrics import auc
from dlrm.model import DLRM
from dlrm.synthetic import PLANTED_SPEC, planted_frame

sys.path.insert(0, str(Path(__file__).parent))  # the spawned ranks import ddp_ranks by name
import ddp_ranks  # noqa: E402


def _weights(out: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)["model"]


def _valid_auc(cfg, weights: dict[str, torch.Tensor]) -> float:
    model = DLRM(cfg.model, len(PLANTED_SPEC.dense), PLANTED_SPEC.table_sizes)
    model.load_state_dict(weights)
    frame = planted_frame(600, 2)
    return auc(frame["purchased"], predict(model, ModelInput.from_frame(frame, PLANTED_SPEC)))


# ----------------------------------------------------------------------------- no processes

def test_a_single_process_is_a_no_op():
    dp = DataParallel.current()
    assert (dp.rank, dp.world_size, dp.is_main, dp.parallel) == (0, 1, True, False)
    rows = torch.arange(10)
    assert dp.shard(rows) is rows and dp.part_size(10) == 10 and dp.gather_rows(7) == [7]
    model = torch.nn.Linear(2, 1)
    assert dp.wrap(model, model, 128) is model and dp.broadcast({"a": 1}) == {"a": 1}


def test_the_parts_of_a_global_batch_cover_it_once():
    rows = torch.randperm(103)
    parts = [DataParallel(r, 4).shard(rows) for r in range(4)]
    assert torch.equal(torch.cat(parts), rows)
    assert [p.numel() for p in parts] == [DataParallel(r, 4).part_size(103) for r in range(4)]
    assert [DataParallel(r, 4).part_start(103) for r in range(4)] == [0, 26, 52, 78]


def test_dense_exchange_only_for_arrays_a_batch_can_cover(monkeypatch):
    small = RobeArray([300, 120, 40], 8, size=900, block=4)
    large = RobeArray([300, 120, 40], 8, size=1_000_000, block=4)
    assert dense_exchange(small, 128) and not dense_exchange(large, 128)
    monkeypatch.setenv("ROBEFLOW_DDP_EXCHANGE", "sparse")
    assert not dense_exchange(small, 128)
    monkeypatch.setenv("ROBEFLOW_DDP_EXCHANGE", "always")
    with pytest.raises(ValueError, match="ROBEFLOW_DDP_EXCHANGE"):
        dense_exchange(small, 128)


def test_the_environment_names_the_world(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert env_world() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert env_world() == (1, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4"):
        env_world()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 400), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_merging_sorted_slot_lists_equals_coalescing(ranks, size, windows, seed):
    """The sparse exchange's merge of the ranks' (sorted, distinct) slots: windows of up to 8
    consecutive slots, overlapping within and across ranks, as ROBE gradients have."""
    g = torch.Generator().manual_seed(seed)
    slots, values = [], []
    for _ in range(ranks):
        n = int(torch.randint(0, windows + 1, (1,), generator=g))
        starts = torch.randint(0, size, (n,), generator=g)
        s = torch.unique((starts.unsqueeze(1) + torch.arange(8)).reshape(-1).clamp(max=size + 7))
        slots.append(s)
        values.append(torch.randn(s.numel(), generator=g))
    union, sums = merge_sorted_slots(slots, values)
    ref = torch.sparse_coo_tensor(torch.cat(slots).unsqueeze(0), torch.cat(values), (size + 8,)).coalesce()
    assert torch.equal(union, ref.indices()[0])
    torch.testing.assert_close(sums, ref.values(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_launch_rejects_a_bad_worker_count(workers):
    with pytest.raises(ValueError, match="train.workers"):
        launch(print, (), workers)


# ----------------------------------------------------------------------------- 2 processes

@pytest.mark.slow
@pytest.mark.parametrize("exchange", ["auto", "sparse"])
def test_two_workers_match_one_process_and_stay_identical(tmp_path, monkeypatch, exchange):
    """The same global batches, split over 2 gloo ranks: the replicas end bitwise equal and
    as one process would (to float summation order), with the same AUC."""
    monkeypatch.setenv("ROBEFLOW_DDP_EXCHANGE", exchange)  # auto: dense for this small array
    cfg = ddp_ranks.small_cfg()
    two = launch(ddp_ranks.train_rank, (cfg, tmp_path / "two"), 2)
    one = launch(ddp_ranks.train_rank, (cfg, tmp_path / "one"), 1)
    assert two["world"] == 2 and one["world"] == 1
    assert (two["steps"], two["samples"]) == (one["steps"], one["samples"]) == (16, 2000)
    r0, r1, single = _weights(tmp_path / "two", 0), _weights(tmp_path / "two", 1), _weights(tmp_path / "one", 0)
    for name in single:
        assert torch.equal(r0[name], r1[name]), f"replicas differ in {name}"
        torch.testing.assert_close(r0[name], single[name], atol=2e-5, rtol=1e-4, msg=name)
    assert r0["embedding.weight"].numel() == RobeArray([300, 120, 40], 8, compression=4, block=4).size
    torch.manual_seed(cfg.seed)
    initial = DLRM(cfg.model, len(PLANTED_SPEC.dense), PLANTED_SPEC.table_sizes).embedding.weight
    assert (r0["embedding.weight"] - initial).abs().max() > 0.05  # the array did train
    assert abs(_valid_auc(cfg, r0) - _valid_auc(cfg, single)) < 0.003


@pytest.mark.slow
def test_two_workers_drop_the_ids_one_process_drops(tmp_path):
    """Id dropout draws from torch's RNG: each rank draws its rows' slice of the global batch's
    draws, so 2 workers still train on what one process does."""
    cfg = ddp_ranks.small_cfg(id_dropout=0.2, epochs=1, batch_size=100)  # parts of 50: 2 x 8 steps
    launch(ddp_ranks.train_rank, (cfg, tmp_path / "two"), 2)
    launch(ddp_ranks.train_rank, (cfg, tmp_path / "one"), 1)
    r0, r1, single = _weights(tmp_path / "two", 0), _weights(tmp_path / "two", 1), _weights(tmp_path / "one", 0)
    for name in single:
        assert torch.equal(r0[name], r1[name]), f"replicas differ in {name}"
        torch.testing.assert_close(r0[name], single[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_full_tables_with_sparse_gradients_stay_identical(tmp_path):
    cfg = ddp_ranks.small_cfg(backend="full", epochs=1)
    res = launch(ddp_ranks.train_rank, (cfg, tmp_path), 2)
    assert res["steps"] == 8
    r0, r1 = _weights(tmp_path, 0), _weights(tmp_path, 1)
    for name in r0:
        assert torch.equal(r0[name], r1[name]), f"replicas differ in {name}"


@pytest.mark.slow
def test_resume_with_two_workers_reproduces_the_uninterrupted_run(tmp_path):
    """Killed at step 11 (checkpoints every 5 steps: step 10 is on disk), resumed with 2
    workers: bitwise the uninterrupted 2-worker run; evaluations and early-stop decisions
    come from rank 0."""
    cfg = ddp_ranks.small_cfg(checkpoint_every=5, eval_every=4)
    full = launch(ddp_ranks.train_rank, (cfg, tmp_path / "full", 1000, tmp_path / "ck-full", False, None, True), 2)
    cut = launch(ddp_ranks.train_rank, (cfg, tmp_path / "cut", 1000, tmp_path / "ck", False, 11, True), 2)
    assert cut["steps"] == 11 and sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "step-000000005.pt", "step-000000010.pt"]
    resumed = launch(ddp_ranks.train_rank, (cfg, tmp_path / "resumed", 1000, tmp_path / "ck", True, None, True), 2)
    assert resumed["steps"] == full["steps"] == 16
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in full["history"]] == [4, 8, 12, 16]
    assert [h["auc"] for h in resumed["history"]] == [h["auc"] for h in full["history"]]
    assert resumed["full_auc"] == full["full_auc"] and full["full_auc"] > 0.6
    # rank 1 never restores the best weights: it holds the last step's, as rank 0's checkpoint
    last = torch.load(tmp_path / "ck" / "step-000000016.pt", weights_only=True)["model"]
    last_full = torch.load(tmp_path / "ck-full" / "step-000000016.pt", weights_only=True)["model"]
    for name, value in _weights(tmp_path / "resumed", 1).items():
        assert torch.equal(value, last[name]) and torch.equal(value, last_full[name]), name
