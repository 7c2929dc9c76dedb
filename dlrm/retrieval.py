"""Retrieval over the whole catalogue: a user/context tower and a softmax over every item.

For each purchase, the purchased item is the label of a softmax over all N items. The
tower embeds the context's sparse features (user, category, device, hour, ...) with the
same embedding backends as the DLRM (a ROBE-Z array by default) and maps them through an
MLP to a hidden vector h; item i scores ``h . w_i + b_i``. Four ways to train the output
layer, all updating only the item rows they touched (row-sparse Adagrad or Adam):

- ``lsh``: SLIDE's LSH-sampled softmax (:class:`gpu_ops.lsh.LSHSoftmax`; Chen et al., MLSys
  2020, https://arxiv.org/abs/1903.03129): softmax over the items the hash tables return
  for h, the label and a few uniform negatives.
- ``full``: the exact softmax over all N items (every row moves every step).
- ``sampled``: sampled softmax with the log-Q correction (Jean et al., ACL 2015,
  https://arxiv.org/abs/1412.2007; Bengio & Senecal 2008): S negatives per batch drawn from
  the items' training popularity Q, logits shifted by ``-log(S Q(i))``.
- ``inbatch``: the batch's other labels as negatives, with the log-Q correction of Yi et al.
  (RecSys 2019, https://research.google/pubs/pub48840/).

Evaluation ranks all N items exactly (Recall@K, P@1); :func:`retrieval_overlap` measures
how much of the exact top k the LSH tables return (sublinear retrieval vs exact MIPS).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlrm.configs import EmbeddingConfig
from dlrm.embeddings import make_embedding
from gpu_ops.lsh import LSHConfig, LSHSoftmax, SparseRowOptimizer

Method = Literal["lsh", "full", "sampled", "inbatch"]
METHODS: tuple[str, ...] = ("lsh", "full", "sampled", "inbatch")

# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalConfig:
    """Tower shape, output-layer method and training of the retrieval model."""

    method: Method = "lsh"
    embedding: EmbeddingConfig = field(default_factory=lambda: EmbeddingConfig(backend="robe", dim=16,
                                                                               compression=10.0))
    tower: tuple[int, ...] = (128,)   # hidden widths of the tower MLP
    dim: int = 64                     # width of the hidden vector = of every item's output vector
    lsh: LSHConfig = field(default_factory=LSHConfig)  # method lsh (its optimizer/lr are item_*)
    negatives: int = 1024             # sampled: popularity negatives shared by a batch
    logq: bool = True                 # inbatch: subtract log Q(i) from each in-batch logit
    item_optimizer: Literal["adagrad", "adam"] = "adagrad"  # row-sparse, per item
    item_lr: float = 0.05
    init_scale: float = 0.01          # item vectors start N(0, init_scale^2 / dim): untrained items score ~0
    tower_lr: float = 1e-3            # Adam on the tower MLP
    embedding_lr: float = 0.05        # Adagrad on the embedding backend
    batch_size: int = 256
    epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        for name in ("dim", "negatives", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected an int >= 1")
        for name in ("item_lr", "tower_lr", "embedding_lr", "init_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected > 0")
        if any(w < 1 for w in self.tower):
            raise ValueError(f"tower={self.tower}: expected widths >= 1")


# ---------------------------------------------------------------------------------------
# Data: jagged sparse context features + the purchased item
# ---------------------------------------------------------------------------------------


@dataclass
class RetrievalData:
    """Purchases: T sparse context features per row (jagged, sample-major) and the item bought.

    ``values``/``offsets`` follow :class:`contract.spec.ModelInput`: bag ``r*T + t`` holds
    ``values[offsets[r*T + t]:offsets[r*T + t + 1]]``.
    """

    values: Tensor        # (nnz,) int64
    offsets: Tensor       # (N*T + 1,) int64
    items: Tensor         # (N,) int64 purchased item
    num_features: int     # T

    def __post_init__(self) -> None:
        n = self.items.numel()
        if self.offsets.numel() != n * self.num_features + 1:
            raise ValueError(f"offsets have {self.offsets.numel()} entries; expected N*T + 1 = "
                             f"{n * self.num_features + 1}")

    @classmethod
    def from_grid(cls, features: np.ndarray | Tensor, items: np.ndarray | Tensor) -> "RetrievalData":
        """Single-hot features ``(N, T)`` (one id per feature) and items ``(N,)``."""
        f = torch.as_tensor(np.asarray(features), dtype=torch.int64)
        if f.dim() != 2:
            raise ValueError(f"features of shape {tuple(f.shape)}: expected (N, T)")
        return cls(f.reshape(-1), torch.arange(f.numel() + 1), torch.as_tensor(np.asarray(items)).long(),
                   f.shape[1])

    @property
    def num_rows(self) -> int:
        return self.items.numel()

    def take(self, rows: Tensor) -> "RetrievalData":
        """The rows ``rows`` (any order) as a new batch."""
        T = self.num_features
        bags = (rows.unsqueeze(1) * T + torch.arange(T)).reshape(-1)           # (R*T,)
        start, length = self.offsets[bags], self.offsets[bags + 1] - self.offsets[bags]
        offsets = torch.zeros(bags.numel() + 1, dtype=torch.int64)
        torch.cumsum(length, 0, out=offsets[1:])
        nnz = int(offsets[-1])
        pos = torch.arange(nnz) - torch.repeat_interleave(offsets[:-1], length, output_size=nnz)
        values = self.values[torch.repeat_interleave(start, length, output_size=nnz) + pos]
        return RetrievalData(values, offsets, self.items[rows], T)

    def batches(self, size: int, generator: torch.Generator | None = None):
        """Batches of ``size`` rows, shuffled when a generator is given."""
        order = torch.randperm(self.num_rows, generator=generator) if generator is not None \
            else torch.arange(self.num_rows)
        for i in range(0, self.num_rows, size):
            yield self.take(order[i:i + size])


# ---------------------------------------------------------------------------------------
# Tower
# ---------------------------------------------------------------------------------------


class UserTower(nn.Module):
    """Context features -> embeddings (one backend for all tables) -> MLP -> ``(B, dim)``."""

    def __init__(self, table_sizes: list[int], cfg: RetrievalConfig):
        super().__init__()
        self.embedding = make_embedding(cfg.embedding, table_sizes)
        widths = [len(table_sizes) * cfg.embedding.dim, *cfg.tower]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], cfg.dim))        # no ReLU: h is signed, for SimHash
        self.mlp = nn.Sequential(*layers)

    def forward(self, values: Tensor, offsets: Tensor) -> Tensor:
        e = self.embedding(values, offsets)                   # (B, T, e)
        return self.mlp(e.flatten(1))                         # (B, dim)


# ---------------------------------------------------------------------------------------
# Output heads: each computes a loss on some item rows and updates only those rows
# ---------------------------------------------------------------------------------------


def init_items(num_items: int, dim: int, cfg: RetrievalConfig) -> Tensor:
    """``(N, d)`` starting item vectors, the same for every method."""
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.randn(num_items, dim, generator=g) * (cfg.init_scale / math.sqrt(dim))


class OutputHead(nn.Module):
    """Item vectors ``(N, d)`` and biases ``(N,)`` in buffers, updated by a row-sparse optimizer."""

    def __init__(self, dim: int, num_items: int, cfg: RetrievalConfig):
        super().__init__()
        g = torch.Generator().manual_seed(cfg.seed)
        self.register_buffer("weight", init_items(num_items, dim, cfg))  # (N, d)
        self.register_buffer("bias", torch.zeros(num_items))            # (N,)
        self.optimizer = SparseRowOptimizer([self.weight, self.bias], cfg.item_optimizer, cfg.item_lr)
        self.num_items = num_items
        self._pending: tuple[Tensor | None, Tensor, Tensor] | None = None

    def _leaves(self, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """Leaves holding item rows ``rows`` (None = all, sharing storage) for autograd."""
        if rows is None:
            w, b = self.weight.detach(), self.bias.detach()
        else:
            w, b = self.weight[rows], self.bias[rows]
        w, b = w.requires_grad_(), b.requires_grad_()
        self._pending = (rows, w, b)
        return w, b

    def loss(self, hidden: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def step(self) -> None:
        """Applies the row-sparse update of the rows the last :meth:`loss` used."""
        if self._pending is None or self._pending[1].grad is None:
            raise ValueError("step() needs loss(...).backward() first")
        rows, w, b = self._pending
        self._pending = None
        self.optimizer.step(rows, [w.grad, b.grad])

    @torch.no_grad()
    def scores(self, hidden: Tensor) -> Tensor:
        """Exact scores ``(B, N)`` of every item."""
        return hidden @ self.weight.t() + self.bias

    @torch.no_grad()
    def retrieve(self, hidden: Tensor, k: int) -> Tensor:
        """``(B, k)`` top items (exact search unless the head has an index)."""
        return self.scores(hidden).topk(k, dim=1).indices


class FullSoftmaxHead(OutputHead):
    """Exact softmax over all N items."""

    def loss(self, hidden: Tensor, labels: Tensor) -> Tensor:
        w, b = self._leaves(None)
        return F.cross_entropy(hidden @ w.t() + b, labels)      # (B, N) logits


class SampledSoftmaxHead(OutputHead):
    """Label + S negatives drawn from Q (popularity), logits corrected by ``-log(S Q(i))``."""

    def __init__(self, dim: int, num_items: int, cfg: RetrievalConfig, popularity: Tensor):
        super().__init__(dim, num_items, cfg)
        q = popularity.double() + 1.0                          # add-one: every item can be drawn
        q = q / q.sum()
        self.register_buffer("log_q", q.log().float())
        self.register_buffer("cdf", torch.cumsum(q, 0))
        self.negatives = cfg.negatives
        self.generator = torch.Generator().manual_seed(cfg.seed + 2)

    def sample(self, n: int) -> Tensor:
        """``(n,)`` items drawn from Q (with replacement)."""
        u = torch.rand(n, generator=self.generator, dtype=torch.float64) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u).clamp_max(self.num_items - 1)

    def loss(self, hidden: Tensor, labels: Tensor) -> Tensor:
        neg = self.sample(self.negatives)                                      # (S,)
        rows, inv = torch.unique(torch.cat([labels, neg]), return_inverse=True)
        w, b = self._leaves(rows)
        B = labels.numel()
        il, ineg = inv[:B], inv[B:]
        corr = math.log(self.negatives)
        pos = (hidden * w[il]).sum(1) + b[il] - (self.log_q[labels] + corr)    # (B,)
        negl = hidden @ w[ineg].t() + b[ineg] - (self.log_q[neg] + corr)       # (B, S)
        negl = negl.masked_fill(neg.unsqueeze(0) == labels.unsqueeze(1), float("-inf"))  # accidental hits
        logits = torch.cat([pos.unsqueeze(1), negl], dim=1)
        return F.cross_entropy(logits, torch.zeros(B, dtype=torch.long))


class InBatchHead(OutputHead):
    """The other samples' labels as negatives (log-Q corrected)."""

    def __init__(self, dim: int, num_items: int, cfg: RetrievalConfig, popularity: Tensor):
        super().__init__(dim, num_items, cfg)
        q = popularity.double() + 1.0
        self.register_buffer("log_q", (q / q.sum()).log().float())
        self.logq = cfg.logq

    def loss(self, hidden: Tensor, labels: Tensor) -> Tensor:
        rows, inv = torch.unique(labels, return_inverse=True)
        w, b = self._leaves(rows)
        logits = hidden @ w[inv].t() + b[inv]                                  # (B, B)
        if self.logq:
            logits = logits - self.log_q[labels].unsqueeze(0)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        same.fill_diagonal_(False)                                             # the same item twice is no negative
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, torch.arange(labels.numel()))


class LSHHead(OutputHead):
    """SLIDE's LSH-sampled softmax; retrieval through the hash tables."""

    def __init__(self, dim: int, num_items: int, cfg: RetrievalConfig):
        nn.Module.__init__(self)
        lsh = replace(cfg.lsh, optimizer=cfg.item_optimizer, lr=cfg.item_lr, seed=cfg.lsh.seed + cfg.seed)
        self.layer = LSHSoftmax(dim, num_items, lsh)
        self.layer.weight.copy_(init_items(num_items, dim, cfg))
        self.layer.index.build(self.layer.weight, self.layer.bias)
        self.num_items = num_items

    @property
    def weight(self) -> Tensor:
        return self.layer.weight

    @property
    def bias(self) -> Tensor:
        return self.layer.bias

    def loss(self, hidden: Tensor, labels: Tensor) -> Tensor:
        return self.layer(hidden, labels).loss()

    def step(self) -> None:
        self.layer.step()

    @torch.no_grad()
    def retrieve(self, hidden: Tensor, k: int) -> Tensor:
        """Top k among the tables' candidates (sublinear in N); -1 where fewer came back."""
        return self.layer.retrieve(hidden, k, budget=self.layer.cfg.max_active)[1]


def make_head(cfg: RetrievalConfig, num_items: int, popularity: Tensor | None = None) -> OutputHead:
    """The output head of ``cfg.method`` over ``num_items`` items."""
    if cfg.method in ("sampled", "inbatch"):
        if popularity is None or popularity.numel() != num_items:
            raise ValueError(f"method {cfg.method!r} needs the training popularity of all {num_items} items")
        cls = SampledSoftmaxHead if cfg.method == "sampled" else InBatchHead
        return cls(cfg.dim, num_items, cfg, popularity)
    if cfg.method == "full":
        return FullSoftmaxHead(cfg.dim, num_items, cfg)
    return LSHHead(cfg.dim, num_items, cfg)


class RetrievalModel(nn.Module):
    """Tower + output head over ``num_items`` items."""

    def __init__(self, table_sizes: list[int], num_items: int, cfg: RetrievalConfig,
                 popularity: Tensor | None = None):
        super().__init__()
        if num_items < 2:
            raise ValueError(f"num_items={num_items}: expected an int >= 2")
        self.cfg, self.num_items = cfg, int(num_items)
        torch.manual_seed(cfg.seed)
        self.tower = UserTower(table_sizes, cfg)
        self.head = make_head(cfg, num_items, popularity)

    def hidden(self, batch: RetrievalData) -> Tensor:
        return self.tower(batch.values, batch.offsets)

    @torch.no_grad()
    def recommend(self, batch: RetrievalData, k: int, exact: bool = True) -> Tensor:
        """``(B, k)`` item ids: exact top k over all items, or through the head's index."""
        h = self.hidden(batch)
        return self.head.scores(h).topk(k, dim=1).indices if exact else self.head.retrieve(h, k)


# ---------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------


@dataclass
class TrainLog:
    """Training progress: one row per evaluation."""

    rows: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0      # wall time in training steps (evaluations excluded)
    steps: int = 0


def popularity(items: Tensor, num_items: int) -> Tensor:
    """``(N,)`` purchases per item."""
    return torch.bincount(items, minlength=num_items)


def train_retrieval(model: RetrievalModel, data: RetrievalData, *, evaluate: Callable[[], dict] | None = None,
                    eval_every: int = 0, eval_seconds: float = 0.0, max_seconds: float = 0.0,
                    max_steps: int = 0, log: Callable[[str], None] | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> TrainLog:
    """Trains ``model`` on purchases ``data`` for ``model.cfg.epochs`` epochs (or a step/time budget).

    Args:
        evaluate: called every ``eval_every`` steps (or ``eval_seconds`` of training time) and
            at the end; its dict (plus ``step``, ``seconds``, ``loss``) becomes a row of the log.
            Its time is not counted.
        max_seconds: stop once this much training time has passed (0 = no limit).
        max_steps: stop after this many steps (0 = no limit).
        clock: the training-time clock (``time.process_time`` counts CPU time only, steadier
            than wall time on a shared machine).
    """
    cfg = model.cfg
    if data.items.numel() and (int(data.items.min()) < 0 or int(data.items.max()) >= model.num_items):
        raise ValueError(f"items in [{int(data.items.min())}, {int(data.items.max())}]: expected "
                         f"0 <= item < {model.num_items}")
    emb = [p for n, p in model.tower.named_parameters() if n.startswith("embedding.")]
    mlp = [p for n, p in model.tower.named_parameters() if not n.startswith("embedding.")]
    opts = [torch.optim.Adam(mlp, lr=cfg.tower_lr)]
    if emb:
        opts.append(torch.optim.Adagrad(emb, lr=cfg.embedding_lr))
    g = torch.Generator().manual_seed(cfg.seed)
    out, loss_sum, loss_n = TrainLog(), 0.0, 0

    def record() -> None:
        nonlocal loss_sum, loss_n
        row = {"step": out.steps, "seconds": out.train_seconds, "loss": loss_sum / max(loss_n, 1)}
        if evaluate is not None:
            row.update(evaluate())
        out.rows.append(row)
        if log:
            log(", ".join(f"{k} {v:.4g}" for k, v in row.items()))
        loss_sum, loss_n = 0.0, 0

    done, next_eval = False, eval_seconds
    for _ in range(cfg.epochs):
        for batch in data.batches(cfg.batch_size, g):
            t0 = clock()
            model.train()
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss = model.head.loss(model.hidden(batch), batch.items)
            loss.backward()
            for o in opts:
                o.step()
            model.head.step()
            out.train_seconds += clock() - t0
            out.steps += 1
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            if (eval_every and out.steps % eval_every == 0) or (eval_seconds and out.train_seconds >= next_eval):
                record()
                while eval_seconds and next_eval <= out.train_seconds:
                    next_eval += eval_seconds
            if (max_steps and out.steps >= max_steps) or (max_seconds and out.train_seconds >= max_seconds):
                done = True
                break
        if done:
            break
    if not out.rows or out.rows[-1]["step"] != out.steps:
        record()
    return out


def ranking_metrics(top: Tensor, items: Tensor, ks: tuple[int, ...] = (10, 100)) -> dict[str, float]:
    """Recall@k and P@1 of ranked lists ``top`` ``(n, K)`` against the one purchased item ``(n,)``.

    With one relevant item per row, Recall@k is the share of rows whose item is in the top
    k, and P@1 the share whose first item is it.
    """
    if top.shape[0] != items.shape[0]:
        raise ValueError(f"{top.shape[0]} ranked lists for {items.shape[0]} items")
    if max(ks) > top.shape[1]:
        raise ValueError(f"k={max(ks)} is longer than the ranked lists ({top.shape[1]})")
    match = top == items.unsqueeze(1)                                          # (n, K)
    n = max(items.shape[0], 1)
    out = {f"recall_at_{k}": int(match[:, :k].any(dim=1).sum()) / n for k in ks}
    out["p_at_1"] = int(match[:, 0].sum()) / n
    return out


@torch.no_grad()
def evaluate_retrieval(model: RetrievalModel, data: RetrievalData, ks: tuple[int, ...] = (10, 100),
                       batch_size: int = 128, exact: bool = True) -> dict[str, float]:
    """:func:`ranking_metrics` of the model's top items for every row of ``data``.

    ``exact`` ranks all N items; otherwise the head's own retrieval (the LSH tables) is used.
    """
    model.eval()
    kmax = min(max(ks), model.num_items)
    tops = [model.recommend(batch, kmax, exact=exact) for batch in data.batches(batch_size)]
    return ranking_metrics(torch.cat(tops), data.items, ks)


@torch.no_grad()
def retrieval_overlap(model: RetrievalModel, data: RetrievalData, k: int = 100, batch_size: int = 128) -> float:
    """Share of the exact top k (maximum inner product) that the head's retrieval returns."""
    model.eval()
    found = 0
    for batch in data.batches(batch_size):
        h = model.hidden(batch)
        exact = model.head.scores(h).topk(k, dim=1).indices                    # (B, k)
        got = model.head.retrieve(h, k)                                        # (B, k), -1 = none
        found += int((exact.unsqueeze(2) == got.unsqueeze(1)).any(dim=2).sum())
    return found / max(data.num_rows * k, 1)
