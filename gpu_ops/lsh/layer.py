"""The LSH-sampled softmax output layer (SLIDE).

SLIDE (Chen et al., MLSys 2020, https://arxiv.org/abs/1903.03129; Daghaghi et al.,
"Accelerating SLIDE Deep Learning on Modern CPUs", MLSys 2021,
https://arxiv.org/abs/2103.10891) trains an output layer of N neurons by computing, for
each sample, only the neurons its hidden vector hits in L hash tables over the neurons'
weight vectors: the active set. The softmax runs over the active set, and only the active
neurons' weights (and their optimizer state) are updated.

Here, per sample, the set is: the label (training), the neurons the tables return (most
table hits first, up to ``max_active``) and ``random_negatives`` uniform neurons, without
repeats. The output weights live in buffers, outside autograd: a step copies the union of
the batch's active rows into a small leaf, autograd gives their gradients (and the
hidden vector's, for the layers below), and :meth:`LSHSoftmax.step` writes the update back
to those rows only, then rehashes the tables when the schedule says so.

Typical use::

    layer = LSHSoftmax(dim=128, num_classes=1_000_000, cfg=LSHConfig())
    out = layer(hidden, labels)                  # SampledLogits
    loss = out.loss()
    loss.backward()                              # grads of the tower and of out's rows
    layer.step()                                 # sparse update + scheduled rehash
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpu_ops.lsh.config import LSHConfig
from gpu_ops.lsh.optim import SparseRowOptimizer
from gpu_ops.lsh.schedule import RehashSchedule
from gpu_ops.lsh.tables import LSHIndex

# ---------------------------------------------------------------------------------------
# Active sets
# ---------------------------------------------------------------------------------------


def merge_sets(labels: Tensor | None, *parts: Tensor) -> Tensor:
    """Per row: the label first, then the distinct ids of ``parts`` other than the label.

    Args:
        labels: ``(B,)`` or None.
        parts: ``(B, M_i)`` ids, -1 = none.

    Returns:
        ``(B, M)`` ids, -1 padded; column 0 is the label when labels are given.
    """
    rest = torch.cat(parts, dim=1) if parts else labels.new_empty(labels.shape[0], 0)
    rest = rest.sort(dim=1).values                                         # (B, M)
    dup = torch.zeros_like(rest, dtype=torch.bool)
    dup[:, 1:] = rest[:, 1:] == rest[:, :-1]
    if labels is not None:
        dup |= rest == labels.unsqueeze(1)
    rest = rest.masked_fill(dup, -1)
    # Push the -1s to the right and drop the all-empty columns.
    rest = rest.sort(dim=1, descending=True).values
    width = int((rest >= 0).sum(dim=1).max()) if rest.numel() else 0
    rest = rest[:, :width]
    return rest if labels is None else torch.cat([labels.unsqueeze(1), rest], dim=1)


class _GatheredLogits(torch.autograd.Function):
    """``logits[b, m] = h[b] . w[inv[b, m]] + bias[inv[b, m]]``, backward by ``index_add_``.

    Autograd's own backward of ``w[inv]`` accumulates through a sorted ``index_put_``, several
    times slower on CPU than adding the ``(B*M, d)`` row gradients with ``index_add_``.
    """

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor, inv: Tensor) -> Tensor:
        wg = w[inv]                                                         # (B, M, d)
        ctx.save_for_backward(h, wg, inv)
        ctx.rows = w.shape[0]
        return torch.bmm(wg, h.unsqueeze(2)).squeeze(2) + b[inv]            # (B, M)

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, wg, inv = ctx.saved_tensors
        flat = inv.reshape(-1)
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.bmm(grad.unsqueeze(1), wg).squeeze(1)            # (B, d)
        if ctx.needs_input_grad[1]:
            rows = (grad.unsqueeze(2) * h.unsqueeze(1)).reshape(-1, h.shape[1])  # (B*M, d)
            grad_w = wg.new_zeros(ctx.rows, h.shape[1]).index_add_(0, flat, rows)
        if ctx.needs_input_grad[2]:
            grad_b = grad.new_zeros(ctx.rows).index_add_(0, flat, grad.reshape(-1))
        return grad_h, grad_w, grad_b, None


def gathered_logits(hidden: Tensor, weight: Tensor, bias: Tensor, inv: Tensor) -> Tensor:
    """``(B, M)`` logits of ``hidden`` ``(B, d)`` against rows ``inv`` ``(B, M)`` of ``weight`` ``(U, d)``."""
    return _GatheredLogits.apply(hidden, weight, bias, inv)


@dataclass
class SampledLogits:
    """Logits of each sample over its own set of neurons."""

    logits: Tensor     # (B, M) float; -inf on padding
    ids: Tensor        # (B, M) neuron ids; -1 on padding
    target: Tensor     # (B,) column of the label in ``ids`` (0), or -1 without labels

    def loss(self) -> Tensor:
        """Mean softmax cross entropy over each sample's set."""
        return F.cross_entropy(self.logits, self.target)


# ---------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------


class LSHSoftmax(nn.Module):
    """A ``dim -> num_classes`` softmax layer trained on LSH-sampled active sets.

    Args:
        dim: width of the hidden vector.
        num_classes: N, the output neurons.
        cfg: hash family, tables, sampling, optimizer and schedule.
    """

    def __init__(self, dim: int, num_classes: int, cfg: LSHConfig | None = None):
        super().__init__()
        cfg = cfg or LSHConfig()
        if dim < 1:
            raise ValueError(f"dim={dim}: expected an int >= 1")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: expected an int >= 2")
        self.cfg, self.dim, self.num_classes = cfg, int(dim), int(num_classes)
        g = torch.Generator().manual_seed(cfg.seed)
        self.register_buffer("weight", torch.randn(num_classes, dim, generator=g) / math.sqrt(dim))  # (N, d)
        self.register_buffer("bias", torch.zeros(num_classes))                                      # (N,)
        self.optimizer = SparseRowOptimizer([self.weight, self.bias], cfg.optimizer, cfg.lr, cfg.eps, cfg.betas)
        self.index = LSHIndex(dim, num_classes, cfg)
        self.schedule = RehashSchedule(cfg.rehash_first, cfg.rehash_growth, cfg.rehash_max)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.steps = 0
        self.rehashes = 0
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None  # rows, weight leaf, bias leaf
        self._labels: Tensor | None = None                          # labels of the last active()
        self.index.build(self.weight, self.bias)

    # -- sets ------------------------------------------------------------------------------

    def active(self, hidden: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(B, d)`` hidden -> ``(B, M)`` neuron ids to compute (label first when given)."""
        self._check_hidden(hidden)
        B = hidden.shape[0]
        hits = self.index.query(hidden, budget=self.cfg.max_active)           # (B, M_a)
        parts = [hits]
        if self.cfg.random_negatives:
            parts.append(torch.randint(0, self.num_classes, (B, self.cfg.random_negatives),
                                       generator=self.generator))
        if labels is not None:
            labels = self._check_labels(labels, B)
        self._labels = labels
        return merge_sets(labels, *parts)

    def _check_hidden(self, hidden: Tensor) -> None:
        if hidden.dim() != 2 or hidden.shape[1] != self.dim:
            raise ValueError(f"hidden of shape {tuple(hidden.shape)}: expected (B, {self.dim})")

    def _check_labels(self, labels: Tensor, batch: int) -> Tensor:
        labels = labels.detach().cpu().long().view(-1)
        if labels.numel() != batch:
            raise ValueError(f"{labels.numel()} labels for a batch of {batch}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels in [{int(labels.min())}, {int(labels.max())}]: expected "
                             f"0 <= label < num_classes={self.num_classes}")
        return labels

    # -- training ----------------------------------------------------------------------------

    def logits_for(self, hidden: Tensor, ids: Tensor) -> SampledLogits:
        """Logits of ``hidden`` ``(B, d)`` over the sets ``ids`` ``(B, M)`` (column 0 the label).

        Keeps the touched rows for :meth:`step`; gradients reach ``hidden`` as usual.
        """
        self._check_hidden(hidden)
        valid = ids >= 0
        rows, inv = torch.unique(ids.clamp_min(0), return_inverse=True)       # (U,), (B, M)
        w = self.weight[rows].to(hidden.device).requires_grad_(torch.is_grad_enabled())  # (U, d)
        b = self.bias[rows].to(hidden.device).requires_grad_(torch.is_grad_enabled())    # (U,)
        inv = inv.to(hidden.device)
        logits = gathered_logits(hidden, w, b, inv)                             # (B, M)
        logits = logits.masked_fill(~valid.to(hidden.device), float("-inf"))
        if torch.is_grad_enabled():
            self._pending = (rows, w, b)
        target = torch.zeros(ids.shape[0], dtype=torch.long, device=hidden.device)
        return SampledLogits(logits, ids, target)

    def forward(self, hidden: Tensor, labels: Tensor) -> SampledLogits:
        """Logits of every sample over its active set ∪ label ∪ random negatives."""
        return self.logits_for(hidden, self.active(hidden, labels))

    def step(self) -> bool:
        """Applies the sparse update of the rows of the last forward (after ``backward``).

        Returns:
            True when the tables were rehashed after this step.
        """
        if self._pending is None:
            raise ValueError("step() without a forward that recorded gradients")
        rows, w, b = self._pending
        self._pending = None
        if w.grad is None:
            raise ValueError("step() before loss.backward(): the active rows have no gradient")
        self.optimizer.step(rows, [w.grad.to(self.weight.device), b.grad.to(self.bias.device)])
        self.steps += 1
        if self.schedule.due(self.steps):
            self.rehash()
            return True
        if self.cfg.reinsert_labels and self._labels is not None:
            labels = self._labels.unique()
            self.index.reinsert(labels, self.weight[labels], self.bias[labels])
        return False

    def rehash(self) -> None:
        """Re-hashes all neurons (drawing new hash functions every ``redraw_every`` rehashes)."""
        self.rehashes += 1
        if self.cfg.redraw_every and self.rehashes % self.cfg.redraw_every == 0:
            self.index.redraw(self.weight, self.bias)
        else:
            self.index.build(self.weight, self.bias)

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def scores(self, hidden: Tensor) -> Tensor:
        """Exact logits ``(B, N)`` over all neurons (the dense layer)."""
        return hidden @ self.weight.to(hidden.device).t() + self.bias.to(hidden.device)

    @torch.no_grad()
    def retrieve(self, hidden: Tensor, k: int, budget: int = 0,
                 index: LSHIndex | None = None) -> tuple[Tensor, Tensor]:
        """Top ``k`` neurons per sample among the tables' candidates, scored exactly.

        Sublinear in N: only the rows the tables return are scored.

        Args:
            hidden: ``(B, d)``.
            k: neurons per sample.
            budget: candidates scored per sample, most table hits first (0 = all).
            index: another index over these neurons (e.g. built for serving with other
                bits/tables than training uses); default the layer's own.

        Returns:
            ``(B, k)`` logits (-inf where fewer than k candidates) and ids (-1 there).
        """
        if k < 1:
            raise ValueError(f"k={k}: expected an int >= 1")
        cand = (index or self.index).query(hidden, budget=budget)             # (B, M)
        if cand.shape[1] < k:
            cand = torch.cat([cand, cand.new_full((cand.shape[0], k - cand.shape[1]), -1)], dim=1)
        out = self.logits_for(hidden, cand)
        top, col = out.logits.topk(k, dim=1)
        ids = cand.to(col.device).gather(1, col)
        return top, ids.masked_fill(torch.isinf(top), -1)
