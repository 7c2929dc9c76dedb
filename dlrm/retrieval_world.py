"""A seeded catalogue world with a planted purchase distribution, for retrieval tests and benchmarks.

Items sit in clusters of ``cluster_size`` (item i in cluster i // cluster_size); cluster k
has a centre c_k and each item an offset e_i in a latent space. Users have a taste u and a
few favourite categories; a category has an intent g. A purchase event (user, category,
device, hour) has intent ``z = taste_weight * u + g_category + d_device + o_hour`` and buys

    P(i | z) = softmax_k(tau_c z.c_k + a_k)[k(i)] * softmax_{j in k(i)}(tau_i z.e_j + p_j)[i]

(a_k, p_j: cluster and item popularity). The exact P(i | z) of every item is known, so the
oracle ranking (all items by planted probability) bounds what any model can reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

FEATURES = ("user", "category", "device", "hour")


@dataclass(frozen=True)
class WorldConfig:
    """Size and sharpness of the planted world."""

    items: int = 100_000
    cluster_size: int = 100     # items per cluster (the catalogue is cut into items / cluster_size)
    users: int = 2000
    categories: int = 100
    devices: int = 4
    hours: int = 24
    latent: int = 16            # width of the latent space
    favourites: int = 3         # categories each user shops in
    taste_weight: float = 0.7   # how much the user (vs the category) sets the intent
    tau_cluster: float = 4.0    # sharpness of the cluster choice
    tau_item: float = 3.0       # sharpness of the item choice inside the cluster
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("items", "cluster_size", "users", "categories", "devices", "hours", "latent",
                     "favourites"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected an int >= 1")
        if self.items % self.cluster_size:
            raise ValueError(f"items={self.items} is not a multiple of cluster_size={self.cluster_size}")


class PlantedWorld:
    """The world's fixed parameters (drawn from ``cfg.seed``) and its event sampler."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        r, K = cfg.latent, cfg.items // cfg.cluster_size
        g = torch.Generator().manual_seed(cfg.seed)
        unit = 1.0 / r ** 0.5
        self.centres = torch.randn(K, r, generator=g) * unit                    # (K, r)
        self.cluster_pop = torch.randn(K, generator=g)                          # (K,)
        self.offsets = torch.randn(cfg.items, r, generator=g) * unit            # (N, r)
        self.item_pop = 0.5 * torch.randn(cfg.items, generator=g)               # (N,)
        self.taste = torch.randn(cfg.users, r, generator=g) * unit              # (U, r)
        self.intent = torch.randn(cfg.categories, r, generator=g) * unit        # (C, r)
        self.device_fx = 0.2 * torch.randn(cfg.devices, r, generator=g) * unit
        self.hour_fx = 0.2 * torch.randn(cfg.hours, r, generator=g) * unit
        self.favourite = torch.randint(0, cfg.categories, (cfg.users, cfg.favourites), generator=g)

    @property
    def table_sizes(self) -> list[int]:
        """Vocabulary of each context feature, in :data:`FEATURES` order."""
        c = self.cfg
        return [c.users, c.categories, c.devices, c.hours]

    def z(self, context: Tensor) -> Tensor:
        """``(n, 4)`` contexts -> ``(n, r)`` intents."""
        u, c, d, h = context.unbind(1)
        return self.cfg.taste_weight * self.taste[u] + self.intent[c] + self.device_fx[d] + self.hour_fx[h]

    def sample(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """``n`` purchase events: contexts ``(n, 4)`` and purchased items ``(n,)``."""
        cfg, m = self.cfg, self.cfg.cluster_size
        g = torch.Generator().manual_seed(seed)
        user = torch.randint(0, cfg.users, (n,), generator=g)
        cat = self.favourite[user, torch.randint(0, cfg.favourites, (n,), generator=g)]
        ctx = torch.stack([user, cat, torch.randint(0, cfg.devices, (n,), generator=g),
                           torch.randint(0, cfg.hours, (n,), generator=g)], dim=1)
        items = torch.empty(n, dtype=torch.int64)
        for s in range(0, n, 4096):                                             # Gumbel-max, by chunks
            z = self.z(ctx[s:s + 4096])                                         # (c, r)
            cl = cfg.tau_cluster * z @ self.centres.t() + self.cluster_pop     # (c, K)
            k = (cl + _gumbel(cl.shape, g)).argmax(1)                           # (c,)
            members = k.unsqueeze(1) * m + torch.arange(m)                      # (c, m)
            il = cfg.tau_item * (self.offsets[members] @ z.unsqueeze(2)).squeeze(2) + self.item_pop[members]
            items[s:s + 4096] = members.gather(1, (il + _gumbel(il.shape, g)).argmax(1, keepdim=True)).squeeze(1)
        return ctx, items

    def log_prob(self, context: Tensor) -> Tensor:
        """``(n, N)`` exact log P(item | context) of every item."""
        cfg, m = self.cfg, self.cfg.cluster_size
        z = self.z(context)
        lc = torch.log_softmax(cfg.tau_cluster * z @ self.centres.t() + self.cluster_pop, dim=1)  # (n, K)
        li = cfg.tau_item * z @ self.offsets.t() + self.item_pop                                  # (n, N)
        li = torch.log_softmax(li.view(z.shape[0], -1, m), dim=2)                                 # (n, K, m)
        return (li + lc.unsqueeze(2)).view(z.shape[0], -1)

    def oracle_recall(self, context: Tensor, items: Tensor, ks: tuple[int, ...] = (10, 100),
                      chunk: int = 64) -> dict[str, float]:
        """Recall@k and P@1 of ranking all items by their planted probability."""
        kmax = max(ks)
        hits = {k: 0 for k in ks}
        p1 = 0
        for s in range(0, context.shape[0], chunk):
            top = self.log_prob(context[s:s + chunk]).topk(kmax, dim=1).indices
            match = top == items[s:s + chunk].unsqueeze(1)
            for k in ks:
                hits[k] += int(match[:, :k].any(1).sum())
            p1 += int(match[:, 0].sum())
        n = max(context.shape[0], 1)
        return {**{f"recall_at_{k}": hits[k] / n for k in ks}, "p_at_1": p1 / n}


def _gumbel(shape: torch.Size, g: torch.Generator) -> Tensor:
    u = torch.rand(shape, generator=g).clamp_(1e-20, 1.0)
    return -torch.log(-torch.log(u))


def world_events(world: PlantedWorld, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` events as numpy arrays (contexts ``(n, 4)``, items ``(n,)``)."""
    ctx, items = world.sample(n, seed)
    return ctx.numpy(), items.numpy()
