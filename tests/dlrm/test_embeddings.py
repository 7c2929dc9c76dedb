import math

import pytest
import torch

from dlrm.configs import EmbeddingConfig
from dlrm.embeddings import FullTables, make_embedding, qr_split

SIZES = [1000, 300, 7, 50]
DIM = 8


def jagged(B: int, sizes: list[int], seed: int, max_len: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = len(sizes)
    lengths = torch.randint(0, max_len + 1, (B * T,), generator=g)
    offsets = torch.zeros(B * T + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    t_of = torch.repeat_interleave(torch.arange(B * T) % T, lengths)
    highs = torch.tensor(sizes)[t_of]
    values = (torch.rand(int(offsets[-1]), generator=g) * highs).long()
    return values, offsets


def reference_bags(rows_of, values, offsets, B, T) -> torch.Tensor:
    """Per-bag sum with a Python loop: rows_of(t, id) -> (dim,)."""
    out = torch.zeros(B, T, DIM)
    for j in range(B * T):
        b, t = divmod(j, T)
        for v in values[offsets[j]:offsets[j + 1]].tolist():
            out[b, t] += rows_of(t, v)
    return out


@pytest.mark.parametrize("backend", ["full", "hashing", "qr", "robe"])
def test_shapes_grads_and_bytes(backend):
    emb = make_embedding(EmbeddingConfig(backend=backend, dim=DIM, compression=10, block=4), SIZES)
    values, offsets = jagged(5, SIZES, seed=0)
    out = emb(values, offsets)
    assert out.shape == (5, len(SIZES), DIM)
    empty = (offsets[1:] == offsets[:-1]).view(5, len(SIZES))
    assert torch.all(out[empty] == 0)  # an empty bag is a zero vector
    out.square().sum().backward()
    assert all(p.grad is not None for p in emb.parameters())
    n_params = sum(p.numel() for p in emb.parameters())
    assert emb.num_bytes == 4 * n_params
    assert emb.full_bytes == 4 * DIM * sum(SIZES)
    assert emb.compression == pytest.approx(emb.full_bytes / emb.num_bytes)


def test_byte_counts_follow_the_compression():
    total = sum(SIZES)
    full = make_embedding(EmbeddingConfig(backend="full", dim=DIM), SIZES)
    assert full.num_bytes == total * DIM * 4
    hashed = make_embedding(EmbeddingConfig(backend="hashing", dim=DIM, compression=10), SIZES)
    assert hashed.num_bytes == math.ceil(total / 10) * DIM * 4
    robe = make_embedding(EmbeddingConfig(backend="robe", dim=DIM, compression=100, block=4), SIZES)
    assert robe.num_bytes == math.ceil(total * DIM / 100) * 4
    robe_sized = make_embedding(EmbeddingConfig(backend="robe", dim=DIM, size=333, block=4), SIZES)
    assert robe_sized.num_bytes == 333 * 4
    qr = make_embedding(EmbeddingConfig(backend="qr", dim=DIM, compression=10), SIZES)
    rows = sum(q + m for q, m in (qr_split(n, n / 10) for n in SIZES))
    assert qr.num_bytes == rows * DIM * 4 and 1 < qr.compression <= 10


def test_qr_split_covers_every_row_uniquely():
    for n, budget in ((1000, 100), (1000, 10), (50, 5), (7, 0.7), (10, 20)):
        q, m = qr_split(n, budget)
        assert q * m >= n
        pairs = {(x // m, x % m) for x in range(n)}
        assert len(pairs) == n


def test_full_tables_match_a_per_bag_loop():
    emb = FullTables(SIZES, DIM)
    values, offsets = jagged(6, SIZES, seed=1)
    want = reference_bags(lambda t, v: emb.tables[t].weight[v].detach(), values, offsets, 6, len(SIZES))
    torch.testing.assert_close(emb(values, offsets), want)
    # single-hot input takes the fast path; it must agree with the general one
    ids = torch.stack([torch.randint(0, n, (6,)) for n in SIZES], dim=1).reshape(-1)
    one = torch.arange(ids.numel() + 1)
    torch.testing.assert_close(emb(ids, one),
                               reference_bags(lambda t, v: emb.tables[t].weight[v].detach(), ids, one, 6, len(SIZES)))


def test_qr_rows_compose_quotient_and_remainder():
    emb = make_embedding(EmbeddingConfig(backend="qr", dim=DIM, compression=10), SIZES)
    values, offsets = jagged(4, SIZES, seed=2)

    def row(t, v):
        m = int(emb.m[t])
        return (emb.q[int(emb.q_offsets[t]) + v // m] * emb.r[int(emb.r_offsets[t]) + v % m]).detach()

    torch.testing.assert_close(emb(values, offsets), reference_bags(row, values, offsets, 4, len(SIZES)))


def test_robe_reads_the_design_mapping():
    cfg = EmbeddingConfig(backend="robe", dim=DIM, size=257, block=4, seed=3)
    emb = make_embedding(cfg, SIZES)
    A, B, C = emb.hash_abc
    P, size, Z = 2038074743, 257, 4
    starts = [0, 1000, 1300, 1307]

    def row(t, v):
        g = (starts[t] + v) % P
        idx = [((g * A + (i // Z) * B + C) % P) % (size - Z + 1) + i % Z for i in range(DIM)]
        return emb.weight.detach()[idx]

    values, offsets = jagged(4, SIZES, seed=4)
    torch.testing.assert_close(emb(values, offsets), reference_bags(row, values, offsets, 4, len(SIZES)))


def test_bad_configs_name_the_value():
    with pytest.raises(ValueError, match="backend 'dense'"):
        make_embedding(EmbeddingConfig(backend="dense"), SIZES)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="smaller than its block"):
        make_embedding(EmbeddingConfig(backend="robe", size=3, block=4), SIZES)
    with pytest.raises(ValueError, match="B\\*T \\+ 1"):
        make_embedding(EmbeddingConfig(backend="hashing", dim=DIM), SIZES)(torch.zeros(3, dtype=torch.long),
                                                                          torch.arange(4))

