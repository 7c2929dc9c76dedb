"""HistoryTower.given_encodings: encodings handed in are read instead of recomputed, the
missing ones are encoded one history at a time and handed back, and the numbers are the
tower's own (the DLRM's scores with and without it agree)."""

from __future__ import annotations

import pytest
import torch

from dlrm.configs import EmbeddingConfig, HistoryConfig, ModelConfig
from dlrm.embeddings import RobeArray
from dlrm.history import HistoryTower


def _tower(**kw) -> HistoryTower:
    torch.manual_seed(0)
    backend = RobeArray([50, 40], 8, size=512, block=8, seed=0)
    cfg = HistoryConfig(max_len=32, table_size=40, depth=2, heads=2, ff_mult=2, **kw)
    return HistoryTower(cfg, 8, backend).eval()


def _batch(B=3, L=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, 7, 0][:B] + [L - 3] * max(0, B - 3))
    hist = torch.randint(0, 40, (B, L), generator=g)
    action = torch.randint(0, 2, (B, L), generator=g)
    days = torch.randint(1, 90, (B, L), generator=g)
    return hist, lengths, action, days


@pytest.mark.parametrize("full_attn_below", [2048, 0])   # full self-attention, LSH
def test_missing_encodings_are_each_historys_own_and_handed_back(full_attn_below):
    tower = _tower(full_attn_below=full_attn_below, bucket_size=4)
    hist, lengths, action, days = _batch()
    with torch.no_grad():
        known = [None, None, None]
        with tower.given_encodings(known):
            got = tower.encode(hist, lengths, action, days)                  # (3, 20, 8)
        for u, n in enumerate(lengths.tolist()):
            w = max(1, n)
            alone = tower.encode(hist[u:u + 1, :w], lengths[u:u + 1], action[u:u + 1, :w], days[u:u + 1, :w])
            assert known[u].shape == (n, 8)
            torch.testing.assert_close(known[u], alone[0, :n])
            torch.testing.assert_close(got[u, :n], alone[0, :n])
            assert torch.equal(got[u, n:], torch.zeros_like(got[u, n:]))
        if full_attn_below:   # full attention: padding changes nothing, so the batch encodes the same
            torch.testing.assert_close(got, tower.encode(hist, lengths, action, days))


def test_given_encodings_are_read_not_recomputed():
    tower = _tower()
    hist, lengths, action, days = _batch()
    with torch.no_grad():
        known = [None] * 3
        with tower.given_encodings(known):
            first = tower.encode(hist, lengths, action, days)
        calls = []
        tower._encode = lambda *a: calls.append(a)                           # would break if reached
        again = [k.clone() for k in known]
        with tower.given_encodings(again):
            second = tower.encode(hist, lengths, action, days)
        assert calls == []
        torch.testing.assert_close(second, first)
        one = [known[0]]
        with tower.given_encodings(one):
            alone = tower.encode(hist[:1], lengths[:1], action[:1], days[:1])
        assert alone.data_ptr() == known[0].data_ptr()                      # one full history: no copy


def test_a_given_encoding_of_the_wrong_length_or_count_is_refused():
    tower = _tower()
    hist, lengths, action, days = _batch()
    with torch.no_grad():
        with tower.given_encodings([torch.zeros(5, 8), None, None]), pytest.raises(ValueError, match="history 0"):
            tower.encode(hist, lengths, action, days)
        with tower.given_encodings([None]), pytest.raises(ValueError, match="1 given encodings for 3"):
            tower.encode(hist, lengths, action, days)
        with tower.given_encodings([None, None, None]), pytest.raises(ValueError, match="side columns"):
            tower.encode(hist, lengths, action[:, :5], days)


def test_the_hand_in_is_this_towers_and_ends_with_the_block():
    tower, other = _tower(), _tower(seed=3)
    hist, lengths, action, days = _batch()
    with torch.no_grad():
        plain = tower.encode(hist, lengths, action, days)
        known = [torch.full((n, 8), 7.0) for n in lengths.tolist()]        # not the real encodings
        with tower.given_encodings(known):
            other.encode(hist, lengths, action, days)                        # another tower: untouched
            assert torch.equal(tower.encode(hist, lengths, action, days)[0, :20], known[0])
        torch.testing.assert_close(tower.encode(hist, lengths, action, days), plain)


def test_dlrm_scores_with_handed_in_encodings_equal_its_own():
    from dlrm.configs import HistoryInputs
    from dlrm.model import DLRM

    torch.manual_seed(0)
    cfg = ModelConfig(embedding=EmbeddingConfig(backend="robe", dim=8, compression=10, block=8),
                      bottom_mlp=(16,), top_mlp=(16,),
                      history=HistoryConfig(max_len=16, depth=1, heads=1, ff_mult=2))
    hi = HistoryInputs(item_table=1, columns=("hist_item", "hist_action", "hist_days"), item_column=0,
                       action_column=1, days_column=2, match=((0, 1),))
    model = DLRM(cfg, 2, [30, 40], history=hi).eval()
    g = torch.Generator().manual_seed(2)
    B = 5
    dense = torch.randn(B, 2, generator=g)
    values = torch.stack([torch.randint(0, 30, (B,), generator=g), torch.randint(0, 40, (B,), generator=g)], 1).reshape(-1)
    offsets = torch.arange(2 * B + 1)
    lens = torch.tensor([12, 3])                                              # two users
    hv = torch.stack([torch.randint(0, 40, (15,), generator=g), torch.randint(0, 2, (15,), generator=g),
                      torch.randint(1, 60, (15,), generator=g)], 1)          # (nnz, C)
    hoff = torch.tensor([0, 12, 15])
    rows = torch.tensor([0, 0, 1, 1, 0])
    with torch.no_grad():
        ref = model(dense, values, offsets, hv, hoff, rows)
        known = [None, None]
        with model.history.given_encodings(known):
            cold = model(dense, values, offsets, hv, hoff, rows)
        with model.history.given_encodings(list(known)):
            warm = model(dense, values, offsets, hv, hoff, rows)
    torch.testing.assert_close(cold, ref)
    torch.testing.assert_close(warm, ref)


def _attend_reference(tower: HistoryTower, encoded, lengths, candidate, match=None, rows=None):
    """Target attention written plainly: every candidate's own copy of its history's keys and
    values, gathered per candidate (what the tower's attend computes with shared projections)."""
    import math

    import torch.nn.functional as F

    from gpu_ops.lsh_attention import hamming_topk, simhash_signatures

    U, L, D = encoded.shape
    B = candidate.shape[0]
    rows = torch.arange(B) if rows is None else rows
    q = tower.to_q(tower.embed(candidate))                                  # (B, D)
    k, v = tower.to_k(encoded)[rows], tower.to_v(encoded)[rows]             # (B, L, D)
    n = lengths[rows]
    mask = torch.arange(L)[None, :] < n[:, None]
    if tower.config.target == "simhash" and L > tower.config.topk:
        idx, mask = hamming_topk(simhash_signatures(q, tower.planes), simhash_signatures(k, tower.planes), mask,
                                 tower.config.topk, first=None if match is None else match > 0)
        k = torch.gather(k, 1, idx[..., None].expand(-1, -1, D))
        v = torch.gather(v, 1, idx[..., None].expand(-1, -1, D))
        match = None if match is None else torch.gather(match, 1, idx)
    if match is not None:
        k = k + F.linear(tower.match(match), tower.to_k.weight)
        v = v + F.linear(tower.match(match), tower.to_v.weight)
    s = torch.einsum("bd,bld->bl", q, k) / math.sqrt(D)
    s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
    att = torch.einsum("bl,bld->bd", torch.softmax(s, dim=-1), v) * (n > 0)[:, None].to(q.dtype)
    return tower.to_out(att)


@pytest.mark.parametrize("target", ["simhash", "full"])
@pytest.mark.parametrize("layout", ["one per candidate", "one user", "two users", "three users, one unread"])
def test_attend_equals_the_plain_target_attention_values_and_gradients(target, layout):
    torch.manual_seed(0)
    backend = RobeArray([50, 40], 8, size=512, block=8, seed=0)
    tower = HistoryTower(HistoryConfig(max_len=32, table_size=40, depth=1, heads=1, target=target, topk=5),
                         8, backend, match_codes=4)
    g = torch.Generator().manual_seed(4)
    B, L = 6, 20
    U, rows = {"one per candidate": (B, None), "one user": (1, torch.zeros(B, dtype=torch.int64)),
               "two users": (2, torch.tensor([1, 0, 0, 1, 1, 0])),
               "three users, one unread": (3, torch.tensor([2, 0, 0, 2, 2, 0]))}[layout]
    encoded = torch.randn(U, L, 8, generator=g, dtype=torch.float32)
    lengths = torch.tensor([20, 3, 0, 12, 17, 9][:U])
    candidate = torch.randint(0, 40, (B,), generator=g)
    match = torch.randint(0, 4, (B, L), generator=g)
    outs, grads = [], []
    with pytest.raises(ValueError, match="rows must be"):
        tower.attend(encoded, lengths, candidate, match, rows=torch.full((B,), U))
    for fn in (HistoryTower.attend, _attend_reference):
        tower.zero_grad()
        enc = encoded.clone().requires_grad_()
        out = fn(tower, enc, lengths, candidate, match, rows=rows)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
        grads.append([enc.grad] + [p.grad for p in tower.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
