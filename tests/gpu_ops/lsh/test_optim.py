"""Row-sparse Adagrad: the rows a step names move by Adagrad's rule, bitwise; the others stay."""

from __future__ import annotations

import torch

from gpu_ops.lsh.optim import SparseRowOptimizer


def test_sparse_adagrad_moves_only_the_named_rows_by_adagrad() -> None:
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(50, 4, generator=g), torch.randn(50, generator=g)
    ref_w, ref_b = w.clone(), b.clone()
    ref_sq = [torch.zeros(50, 4), torch.zeros(50)]
    opt = SparseRowOptimizer([w, b], "adagrad", lr=0.1)
    start, named = w.clone(), set()
    for _ in range(3):
        ids = torch.randperm(50, generator=g)[:17]
        grads = [torch.randn(17, 4, generator=g), torch.randn(17, generator=g)]
        opt.step(ids, grads)
        named.update(ids.tolist())
        for p, sq, grad in zip((ref_w, ref_b), ref_sq, grads):   # Adagrad, written out row by row
            for j, i in enumerate(ids.tolist()):
                sq[i] = sq[i] + grad[j] * grad[j]
                p[i] = p[i] - 0.1 * grad[j] / (sq[i].sqrt() + 1e-8)
    assert torch.equal(w, ref_w) and torch.equal(b, ref_b)
    assert torch.equal(opt.sq[0], ref_sq[0]) and torch.equal(opt.sq[1], ref_sq[1])
    untouched = [i for i in range(50) if i not in named]
    assert untouched and torch.equal(w[untouched], start[untouched])
    assert opt.steps.tolist() == [int(opt.steps[i]) if i in named else 0 for i in range(50)]
