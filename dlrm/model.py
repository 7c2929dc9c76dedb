"""The DLRM: bottom MLP + embedding backend (+ the user-history tower) + interaction + top MLP -> one logit."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from contract.spec import FeatureSpec
from dlrm.configs import HistoryInputs, ModelConfig
from dlrm.embeddings import EmbeddingBackend, make_embedding
from dlrm.history import HistoryTower, pad_recent, unique_histories
from dlrm.modules import CrossInteraction, DotInteraction, mlp

ACTION_COLUMN, DAYS_COLUMN = "hist_action", "hist_days"   # the feature store's names (features.transform)


def history_inputs(cfg: ModelConfig, spec: FeatureSpec) -> HistoryInputs | None:
    """Where the tower reads the user history of data with ``spec``; None when the tower is
    off (``model.history.enabled`` false) or the data carries no history.

    Raises:
        ValueError: the spec has no sparse feature ``history.item_feature``, or no history
            column of its ids.
    """
    h = cfg.history
    if not h.enabled or spec.history is None:
        return None
    names = [f.name for f in spec.sparse]
    if h.item_feature not in names:
        raise ValueError(f"model.history.item_feature = {h.item_feature!r} is not a sparse feature of the "
                         f"spec ({names})")
    table = names.index(h.item_feature)
    if spec.sparse[table].multi_hot:
        raise ValueError(f"model.history.item_feature {h.item_feature!r} is multi-hot; the candidate is one item")
    cols = spec.history.names
    item = [i for i, c in enumerate(spec.history.columns) if c.ids_of == h.item_feature]
    if not item:
        raise ValueError(f"the user history {cols} holds no ids of {h.item_feature!r}")
    single = {f.name: t for t, f in enumerate(spec.sparse) if not f.multi_hot}
    match = tuple((i, single[c.ids_of]) for i, c in enumerate(spec.history.columns) if c.ids_of in single)
    return HistoryInputs(item_table=table, columns=tuple(cols), item_column=item[0],
                         action_column=cols.index(ACTION_COLUMN) if ACTION_COLUMN in cols else None,
                         days_column=cols.index(DAYS_COLUMN) if DAYS_COLUMN in cols else None,
                         match=match if cfg.history.match else ())


class DLRM(nn.Module):
    """DLRM over ``num_dense`` dense features and tables of ``table_sizes`` rows.

    Args:
        cfg: the model config (backend, MLP widths, interaction, history tower).
        num_dense: number of dense features (the bottom MLP's input width).
        table_sizes: rows of each sparse feature's (virtual) table, in FeatureSpec order.
        history: where the user history sits in the input (:func:`history_inputs`); None: no
            history tower. The tower's output joins the interaction as one more embedding.

    ``forward(dense (B, D), values (nnz,), offsets (B*T + 1,)[, history (nnz_h, C),
    history_offsets (U + 1,), history_rows (B,)])`` returns logits (B,). The history is
    jagged, each row's events newest first (as :class:`contract.spec.ModelInput` holds it);
    ``history_rows`` maps each row to its history (None: row b reads history b, U = B), so a
    request scoring many candidates of one user encodes that user's history once.
    """

    def __init__(self, cfg: ModelConfig, num_dense: int, table_sizes: list[int],
                 history: HistoryInputs | None = None):
        super().__init__()
        d = cfg.embedding.dim
        self.config = cfg
        self.num_dense = int(num_dense)
        self.table_sizes = [int(n) for n in table_sizes]
        if num_dense < 1:
            raise ValueError(f"DLRM needs at least one dense feature, got num_dense={num_dense}")
        self.bottom = mlp([num_dense, *cfg.bottom_mlp, d], last_activation=True)
        self.embedding: EmbeddingBackend = make_embedding(cfg.embedding, table_sizes)
        self.history_inputs = history
        self.history: HistoryTower | None = None
        if history is not None:
            if not 0 <= history.item_table < len(table_sizes):
                raise ValueError(f"history item_table {history.item_table} is not one of the {len(table_sizes)} tables")
            hcfg = cfg.history
            if hcfg.table_size == 0:   # the history ids are the candidate item's
                hcfg = replace(hcfg, table_size=self.table_sizes[history.item_table])
            self.history = HistoryTower(hcfg, d, self.embedding,
                                        match_codes=2 ** len(history.match) if history.match else 0)
        num_vectors = len(table_sizes) + 1 + (self.history is not None)
        if cfg.interaction == "dot":
            self.interaction = DotInteraction(num_vectors)
            top_in = d + self.interaction.out_features_extra
        elif cfg.interaction == "dcn":
            self.interaction = CrossInteraction(num_vectors * d, cfg.dcn_layers, cfg.dcn_rank)
            top_in = num_vectors * d
        else:
            raise ValueError(f"interaction {cfg.interaction!r}; expected 'dot' or 'dcn'")
        self.top = mlp([top_in, *cfg.top_mlp, 1], last_activation=False)

    def forward(self, dense: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor,
                history: torch.Tensor | None = None, history_offsets: torch.Tensor | None = None,
                history_rows: torch.Tensor | None = None) -> torch.Tensor:
        x = self.bottom(dense)                                     # (B, d)
        e = self.embedding(values, offsets)                        # (B, T, d)
        if self.history is not None:
            h = self.history_vector(values, offsets, history, history_offsets, history_rows)  # (B, d)
            e = torch.cat([e, h[:, None].to(e.dtype)], dim=1)      # (B, T + 1, d)
        # bf16 autocast: the dot products and the logit in float32 (in bf16 each embedding, dot
        # product and logit keeps 8 bits, and scores tie); both are a small share of the FLOPs.
        # DCN's cross layers are matmuls: they stay under autocast.
        autocast = torch.is_autocast_enabled(x.device.type)
        if autocast and isinstance(self.interaction, DotInteraction):
            with torch.autocast(x.device.type, enabled=False):
                z = self.interaction(x.float(), e.float())
        else:
            z = self.interaction(x, e.to(x.dtype))                 # (B, top_in)
        if not autocast:
            return self.top(z).squeeze(1)                          # (B,)
        *hidden, last = self.top                                   # (under autocast MLP runs layer by layer)
        for layer in hidden:
            z = layer(z)
        with torch.autocast(x.device.type, enabled=False):
            return last(z.float()).squeeze(1)

    def history_vector(self, values: torch.Tensor, offsets: torch.Tensor, history: torch.Tensor | None,
                       history_offsets: torch.Tensor | None, history_rows: torch.Tensor | None = None) -> torch.Tensor:
        """The tower's ``(B, d)`` output: each row's candidate item attending over its user's
        encoded history (see the class docstring for the arguments)."""
        hi = self.history_inputs
        assert self.history is not None and hi is not None
        if history is None or history_offsets is None:
            raise ValueError(f"this model reads the user history ({list(hi.columns)}); the input carries none")
        if history.dim() != 2 or history.shape[1] != len(hi.columns):
            raise ValueError(f"history must be (nnz, {len(hi.columns)}) for columns {list(hi.columns)}, "
                             f"got shape {tuple(history.shape)}")
        T = len(self.table_sizes)
        B = (offsets.numel() - 1) // T
        users = history_offsets.numel() - 1
        if history_rows is None and users != B:
            raise ValueError(f"{users} histories for {B} rows; give history_rows to share them")
        if history_rows is None and not self.training and B > 1 and not self.history.encodings_given():
            shared = unique_histories(history, history_offsets)   # scoring: encode each distinct one once
            if shared is not None:
                history, history_offsets, history_rows = shared
        own = values[offsets[:-1].view(B, T)]                       # (B, T) first id of each bag
        cand = own[:, hi.item_table]                                # (B,) the candidate item ids
        hist, lengths = pad_recent(history, history_offsets, self.history.config.max_len)   # (U, L, C), (U,)

        def col(i: int | None) -> torch.Tensor | None:
            return None if i is None else hist[..., i]

        enc = self.history.encode(hist[..., hi.item_column], lengths, col(hi.action_column),
                                  col(hi.days_column))             # (U, L, d)
        if history_rows is not None and history_rows.shape != (B,):
            raise ValueError(f"history_rows must be ({B},), got {tuple(history_rows.shape)}")
        match = None
        if hi.match:   # bit j: the event's column match[j] holds the row's own id of that table
            match = torch.zeros(B, hist.shape[1], dtype=torch.int64, device=hist.device)   # (B, L)
            for j, (column, table) in enumerate(hi.match):
                ids = hist[..., column] if history_rows is None else hist[..., column][history_rows]   # (B, L)
                match |= (ids == own[:, table, None]).to(torch.int64) << j
        return self.history.attend(enc, lengths, cand, match, rows=history_rows)

    @property
    def embedding_bytes(self) -> int:
        """Bytes of the embedding parameters."""
        return self.embedding.num_bytes

    @property
    def compression(self) -> float:
        """Full float32 tables' bytes / the embedding backend's bytes."""
        return self.embedding.compression

    def dense_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the embedding backend (the MLPs, the interaction, the history tower)."""
        emb = {id(p) for p in self.embedding.parameters()}
        return [p for p in self.parameters() if id(p) not in emb]
