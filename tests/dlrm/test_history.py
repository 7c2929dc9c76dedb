"""The history tower: shapes, the shared ROBE array, masking (padding, empty histories,
other rows), gradients, pad_history and config checks."""

from __future__ import annotations

import pytest
import torch

from dlrm.embeddings import FullTables, HashedTable, RobeArray
from dlrm.history import HistoryConfig, HistoryTower, days_bucket, pad_history, pad_recent
from gpu_ops import robe_lookup_reference
from gpu_ops.lsh_attention import simhash_signatures

SIZES = [50, 7, 300]   # the model's own tables; the history table comes after them
D = 8


def _robe():
    torch.manual_seed(0)
    return RobeArray(SIZES, D, size=4096, block=4, seed=3)


def _batch(B=4, L=12, table=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, table, (B, L), generator=g)
    lengths = torch.tensor([L, 5, 0, 1][:B])
    return hist, lengths, torch.randint(0, table, (B,), generator=g)


TOWERS = {   # every path of the tower: full / LSH self-attention, SimHash / full target attention
    "full-full": dict(full_attn_below=4096, target="full"),
    "lsh-simhash": dict(full_attn_below=0, target="simhash", topk=4, bucket_size=4, n_hashes=2),
    "lsh-full": dict(full_attn_below=0, target="full", bucket_size=4),
}


def _tower(kind, backend=None, match_codes=0, **over):
    torch.manual_seed(1)
    cfg = HistoryConfig(max_len=16, table_size=300, depth=2, heads=2, **{**TOWERS[kind], **over})
    return HistoryTower(cfg, D, backend if backend is not None else _robe(), match_codes=match_codes)


@pytest.mark.parametrize("kind", TOWERS)
def test_shapes_and_empty_history(kind):
    tower = _tower(kind)
    hist, lengths, cand = _batch()
    out = tower(hist, lengths, cand)
    assert out.shape == (4, D) and torch.isfinite(out).all()
    torch.testing.assert_close(out[2], tower.to_out.bias)        # no history: the learned vector
    empty = tower(hist[:, :0], torch.zeros(4, dtype=torch.int64), cand)
    torch.testing.assert_close(empty, tower.to_out.bias.expand(4, D))


def test_history_rows_come_from_the_same_robe_array_at_their_own_offset():
    backend = _robe()
    tower = HistoryTower(HistoryConfig(max_len=16), D, backend)
    ids = torch.tensor([[0, 5, 299], [17, 17, 1]])
    start = torch.tensor([sum(SIZES)])
    ref = robe_lookup_reference(backend.weight, ids.reshape(-1, 1), table_offsets=start, dim=D,
                                block=backend.block, hash_abc=backend.hash_abc)[:, 0].view(2, 3, D)
    torch.testing.assert_close(tower.embed(ids), ref)
    # ... the rows the backend itself would read for a table appended after its own
    wider = RobeArray([*SIZES, 300], D, size=4096, block=4, seed=3)
    wider.weight.data.copy_(backend.weight.data)
    grid = torch.zeros(6, 4, dtype=torch.int64)
    grid[:, 3] = ids.reshape(-1)
    torch.testing.assert_close(tower.embed(ids), wider(grid.reshape(-1), torch.arange(25))[:, 3].view(2, 3, D))
    assert not any(p is backend.weight for p in tower.parameters())   # the DLRM owns the array


def test_hashing_backend_shares_its_table_and_full_backend_keeps_its_own():
    torch.manual_seed(0)
    hashed = HashedTable(SIZES, D, compression=10.0)
    tower = HistoryTower(HistoryConfig(max_len=16), D, hashed)
    ids = torch.tensor([[3, 4]])
    g = (ids + sum(SIZES)) % 2038074743
    torch.testing.assert_close(tower.embed(ids), hashed.weight[(g * hashed.hash_a + hashed.hash_b)
                                                               % 2038074743 % hashed.rows])
    own = HistoryTower(HistoryConfig(max_len=16, table_size=300), D, FullTables(SIZES, D))
    assert own.own_table is not None and own.own_table.num_embeddings == 300
    with pytest.raises(ValueError, match="table_size"):
        HistoryTower(HistoryConfig(max_len=16), D, FullTables(SIZES, D))


@pytest.mark.parametrize("kind", TOWERS)
def test_padding_and_other_rows_do_not_change_a_row(kind):
    tower = _tower(kind).eval()
    hist, lengths, cand = _batch()
    out = tower(hist, lengths, cand)
    hist2 = hist.clone()
    hist2[1, 5:] = torch.arange(7) + 200          # row 1's padding
    hist2[0] = (hist2[0] + 1) % 300               # another user's history
    cand2 = cand.clone()
    cand2[0] = (cand[0] + 7) % 300
    out2 = tower(hist2, lengths, cand2)
    torch.testing.assert_close(out2[1:], out[1:], rtol=0, atol=0)
    assert not torch.allclose(out2[0], out[0])    # the perturbation does reach its own row


@pytest.mark.parametrize("kind", TOWERS)
def test_gradients_flow_to_the_array_and_the_tower(kind):
    backend = _robe()
    tower = _tower(kind, backend).train()
    hist, lengths, cand = _batch()
    action, days = hist % 2, hist % 40 + 1
    tower.attend(tower.encode(hist, lengths, action, days), lengths, cand).pow(2).sum().backward()
    assert backend.weight.grad is not None and backend.weight.grad.abs().sum() > 0
    for name, p in tower.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name in ("encoder.layers.blocks.0.f.fn.to_qk.weight", "to_q.weight", "to_k.weight",
                 "to_v.weight", "to_out.weight"):
        assert dict(tower.named_parameters())[name].grad.abs().sum() > 0, name


def test_padded_ids_get_no_gradient():
    backend = _robe()
    tower = _tower("lsh-full", backend).train()
    hist = torch.tensor([[3, 4, 5, 6]])
    cand = torch.tensor([9])
    tower(hist, torch.tensor([2]), cand).sum().backward()
    g1 = backend.weight.grad.clone()
    backend.weight.grad = None
    tower(torch.tensor([[3, 4, 250, 251]]), torch.tensor([2]), cand).sum().backward()
    torch.testing.assert_close(backend.weight.grad, g1, rtol=0, atol=0)


def test_simhash_target_attention_reads_only_topk_events():
    # with topk >= the history it is the full target attention
    hist, lengths, cand = _batch()
    a = _tower("lsh-simhash", topk=12).eval()
    b = _tower("lsh-simhash", target="full").eval()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(hist, lengths, cand), b(hist, lengths, cand))
    small = _tower("lsh-simhash", topk=2).eval()
    small.load_state_dict(a.state_dict())
    assert not torch.allclose(small(hist, lengths, cand)[0], a(hist, lengths, cand)[0])


def test_pad_history_keeps_the_latest_events():
    values = torch.tensor([1, 2, 3, 4, 5, 6, 7])
    offsets = torch.tensor([0, 5, 5, 7])
    hist, lengths = pad_history(values, offsets, max_len=3)
    assert lengths.tolist() == [3, 0, 2]
    assert hist.tolist() == [[3, 4, 5], [0, 0, 0], [6, 7, 0]]
    hist, lengths = pad_history(torch.zeros(0, dtype=torch.int64), torch.tensor([0, 0]), max_len=3)
    assert hist.shape == (1, 0) and lengths.tolist() == [0]


def test_bad_config_and_inputs_raise():
    with pytest.raises(ValueError, match="depth"):
        HistoryConfig(depth=0)
    with pytest.raises(ValueError, match="target"):
        HistoryConfig(target="din")
    tower = _tower("full-full")
    hist, lengths, cand = _batch(L=17)
    with pytest.raises(ValueError, match="max_len"):
        tower(hist, lengths, cand)
    hist, lengths, cand = _batch(L=4)
    with pytest.raises(ValueError, match="lengths"):
        tower(hist, lengths + 10, cand)


def test_encode_once_attend_many_candidates():
    # serving: one user's history encoded once, expanded over its candidates
    tower = _tower("lsh-simhash").eval()
    hist, lengths, _ = _batch()
    cands = torch.tensor([3, 99, 250])
    with torch.no_grad():
        enc = tower.encode(hist[1:2], lengths[1:2])                      # (1, L, D)
        once = tower.attend(enc.expand(3, -1, -1), lengths[1:2].expand(3), cands)
        each = tower(hist[1:2].expand(3, -1), lengths[1:2].expand(3), cands)
    torch.testing.assert_close(once, each)


def test_pad_recent_turns_newest_first_rows_into_the_towers_layout():
    # rows of (item, action) events newest first: [3, 2, 1], [], [9, 8]
    values = torch.tensor([[3, 1], [2, 0], [1, 0], [9, 1], [8, 0]])
    offsets = torch.tensor([0, 3, 3, 5])
    hist, lengths = pad_recent(values, offsets, max_len=2)
    assert lengths.tolist() == [2, 0, 2]
    assert hist[..., 0].tolist() == [[2, 3], [0, 0], [8, 9]]        # the 2 latest, oldest first
    assert hist[..., 1].tolist() == [[0, 1], [0, 0], [0, 1]]
    hist, lengths = pad_recent(values[:0], torch.zeros(3, dtype=torch.int64), max_len=4)
    assert hist.shape == (2, 1, 2) and lengths.tolist() == [0, 0]   # one masked position


def test_action_and_days_embeddings_change_only_their_rows_and_respect_padding():
    tower = _tower("full-full").eval()
    hist, lengths, cand = _batch()
    action, days = hist % 2, hist % 40 + 1
    base = tower.attend(tower.encode(hist, lengths, action, days), lengths, cand)
    flipped = action.clone()
    flipped[0, 0] = 1 - flipped[0, 0]
    flipped[1, 7:] = 1 - flipped[1, 7:]                                 # row 1's padding only
    out = tower.attend(tower.encode(hist, lengths, flipped, days), lengths, cand)
    assert not torch.allclose(out[0], base[0])
    torch.testing.assert_close(out[1:], base[1:], rtol=0, atol=0)
    assert days_bucket(torch.tensor([0, 1, 2, 3, 4, 7, 8, 10_000]), 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 4]


@pytest.mark.parametrize("gather", [True, False], ids=["gathered", "history-by-history"])
@pytest.mark.parametrize("kind", TOWERS)
def test_attend_with_rows_equals_each_row_carrying_its_history(kind, gather, monkeypatch):
    import dlrm.history

    if not gather:   # the path for candidates whose copies of their histories would be too large
        monkeypatch.setattr(dlrm.history, "GATHER_MAX_BYTES", 0)
    tower = _tower(kind, match_codes=4).eval()
    hist, lengths, _ = _batch(B=3, L=12)
    enc = tower.encode(hist, lengths)
    g = torch.Generator().manual_seed(5)
    rows = torch.tensor([2, 0, 0, 1, 2, 0])
    cand = torch.randint(0, 300, (6,), generator=g)
    match = torch.randint(0, 4, (6, 12), generator=g)
    got = tower.attend(enc, lengths, cand, match, rows=rows)
    want = tower.attend(enc[rows], lengths[rows], cand, match)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    one = tower.attend(enc[:1], lengths[:1], cand, match, rows=torch.zeros(6, dtype=torch.int64))
    torch.testing.assert_close(one, tower.attend(enc[[0] * 6], lengths[[0] * 6], cand, match), rtol=1e-5, atol=1e-6)


def test_simhash_target_attention_picks_the_matching_events_first():
    tower = _tower("lsh-simhash", match_codes=2).eval()         # topk = 4 of 12 events
    hist, lengths, cand = _batch(B=1, L=12)
    lengths = torch.tensor([12])
    enc = tower.encode(hist, lengths)
    match = torch.zeros(1, 12, dtype=torch.int64)
    base = tower.attend(enc, lengths, cand, match)
    # an event far from the candidate's SimHash neighbours changes nothing ... unless it matches
    with torch.no_grad():
        q = tower.to_q(tower.embed(cand))
        dist = (simhash_signatures(tower.to_k(enc), tower.planes) != simhash_signatures(q, tower.planes)[:, None]).sum(-1)
    far = int(dist[0].argmax())
    match[0, far] = 1
    assert not torch.allclose(tower.attend(enc, lengths, cand, match), base)
