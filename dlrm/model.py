"""The DLRM: bottom MLP + embedding backend + interaction + top MLP -> one logit."""

from __future__ import annotations

import torch
from torch import nn

from dlrm.configs import ModelConfig
from dlrm.embeddings import EmbeddingBackend, make_embedding
from dlrm.modules import CrossInteraction, DotInteraction, mlp


class DLRM(nn.Module):
    """DLRM over ``num_dense`` dense features and tables of ``table_sizes`` rows.

    Args:
        cfg: the model config (backend, MLP widths, interaction).
        num_dense: number of dense features (the bottom MLP's input width).
        table_sizes: rows of each sparse feature's (virtual) table, in FeatureSpec order.

    ``forward(dense (B, D), values (nnz,), offsets (B*T + 1,))`` returns logits (B,).
    """

    def __init__(self, cfg: ModelConfig, num_dense: int, table_sizes: list[int]):
        super().__init__()
        d = cfg.embedding.dim
        self.config = cfg
        self.num_dense = int(num_dense)
        self.table_sizes = [int(n) for n in table_sizes]
        if num_dense < 1:
            raise ValueError(f"DLRM needs at least one dense feature, got num_dense={num_dense}")
        self.bottom = mlp([num_dense, *cfg.bottom_mlp, d], last_activation=True)
        self.embedding: EmbeddingBackend = make_embedding(cfg.embedding, table_sizes)
        num_vectors = len(table_sizes) + 1
        if cfg.interaction == "dot":
            self.interaction = DotInteraction(num_vectors)
            top_in = d + self.interaction.out_features_extra
        elif cfg.interaction == "dcn":
            self.interaction = CrossInteraction(num_vectors * d, cfg.dcn_layers, cfg.dcn_rank)
            top_in = num_vectors * d
        else:
            raise ValueError(f"interaction {cfg.interaction!r}; expected 'dot' or 'dcn'")
        self.top = mlp([top_in, *cfg.top_mlp, 1], last_activation=False)

    def forward(self, dense: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)                                     # (B, d)
        e = self.embedding(values, offsets)                        # (B, T, d)
        z = self.interaction(x, e.to(x.dtype))                     # (B, top_in)
        return self.top(z).squeeze(1)                              # (B,)

    @property
    def embedding_bytes(self) -> int:
        """Bytes of the embedding parameters."""
        return self.embedding.num_bytes

    @property
    def compression(self) -> float:
        """Full float32 tables' bytes / the embedding backend's bytes."""
        return self.embedding.compression

    def dense_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the embedding backend (the MLPs and the interaction)."""
        emb = {id(p) for p in self.embedding.parameters()}
        return [p for p in self.parameters() if id(p) not in emb]
