"""Config dataclasses of the model, training and evaluation (dataclasses only).

``params.yaml`` sections ``train`` and ``evaluate`` are read into :class:`TrainConfig`
and :class:`EvaluateConfig` with :func:`contract.params.load_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

Backend = Literal["full", "hashing", "qr", "robe"]


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which embedding backend holds the sparse features, and how small it is."""

    backend: Backend = "robe"
    dim: int = 16                 # embedding width d (also the bottom MLP's output width)
    compression: float = 1000.0   # full-table floats / backend floats (hashing, qr, robe)
    size: int = 0                 # robe: array length |M| in floats; 0 = derive from compression
    block: int = 32               # robe: Z, consecutive floats read per hash (ROBE-Z)
    seed: int = 0                 # robe / hashing: seed of the universal-hash constants
    qr_operation: Literal["mult", "add"] = "mult"  # qr: how quotient and remainder rows combine


@dataclass(frozen=True)
class HistoryConfig:
    """The history tower (``model.history``): the user's last events, read through LSH
    self-attention and target attention of the candidate item, as one more embedding of the
    DLRM's interaction (:mod:`dlrm.history`). Used when ``enabled`` and the data carries a
    user history (``FeatureSpec.history``)."""

    enabled: bool = True           # read the user history when the data has one
    max_len: int = 256             # events kept per user (the most recent); the recency table's size
    item_feature: str = "item"     # the sparse feature whose ids the history and the candidate hold
    table_size: int = 0            # rows of the history id table; 0 = that feature's table size
    depth: int = 2                 # reversible encoder blocks
    heads: int = 2                 # self-attention heads (head width = embedding dim / heads)
    bucket_size: int = 64          # LSH chunk length (tokens); buckets ~ one chunk each
    n_hashes: int = 4              # LSH rounds
    full_attn_below: int = 2048    # shorter histories use full self-attention: faster there (history_bench,
                                   # CPU, D=16, fwd+bwd: full 3-4x faster at 256, 1.3-2x at 1K;
                                   # LSH 1.7-2.8x faster at 4K)
    ff_mult: int = 4               # feed-forward width / D
    ff_chunks: int = 1             # feed-forward applied to this many sequence slices at a time
    dropout: float = 0.0           # in the feed-forward
    reversible: bool = True        # recompute activations in backward (memory flat in depth)
    recency: bool = True           # add a learned embedding of each event's rank from the latest
    actions: bool = True           # add a learned embedding of each event's action (offered / purchased)
    days_buckets: int = 16         # add a learned embedding of log2(days ago), this many buckets (0 = off)
    match: bool = True             # target attention: keys and values gain a learned embedding of which
                                   # ids an event shares with the candidate (same item, same category:
                                   # SIM's hard search as a feature; what re-buying needs)
    target: Literal["simhash", "full"] = "simhash"  # target attention over top-k or all events
    topk: int = 64                 # simhash: events the candidate attends to (all when fewer)
    simhash_bits: int = 16         # simhash: signature length m (Hamming distance in [0, m])
    seed: int = 0                  # LSH rotations and SimHash hyperplanes

    def __post_init__(self) -> None:
        if self.table_size < 0:
            raise ValueError(f"history.table_size must be >= 0 (0 = the item feature's), got {self.table_size}")
        for name in ("max_len", "depth", "heads", "bucket_size", "n_hashes", "ff_mult",
                     "ff_chunks", "topk", "simhash_bits"):
            if getattr(self, name) < 1:
                raise ValueError(f"history.{name} must be >= 1, got {getattr(self, name)}")
        if self.days_buckets < 0:
            raise ValueError(f"history.days_buckets must be >= 0 (0 = off), got {self.days_buckets}")
        if self.full_attn_below < 0:
            raise ValueError(f"history.full_attn_below must be >= 0, got {self.full_attn_below}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"history.dropout must be in [0, 1), got {self.dropout}")
        if self.target not in ("simhash", "full"):
            raise ValueError(f"history.target must be 'simhash' or 'full', got {self.target!r}")


@dataclass(frozen=True)
class ModelConfig:
    """DLRM shape. Input widths (dense features, table sizes) come from the FeatureSpec."""

    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    bottom_mlp: tuple[int, ...] = (64, 32)   # hidden widths; a last layer to embedding.dim is added
    top_mlp: tuple[int, ...] = (64, 32)      # hidden widths; a last layer to 1 logit is added
    interaction: Literal["dot", "dcn"] = "dot"  # pairwise dots (DLRM) or DCNv2 cross layers
    dcn_layers: int = 3          # dcn: number of cross layers
    dcn_rank: int = 64           # dcn: rank of the low-rank cross weight (0 = full rank)
    history: HistoryConfig = field(default_factory=HistoryConfig)  # the user-history tower


@dataclass(frozen=True)
class OptimConfig:
    """One optimizer for the dense MLPs, one for the embedding array, one LR schedule."""

    dense: Literal["adam", "adagrad", "sgd"] = "adam"
    dense_lr: float = 1e-3
    # rowwise_adagrad (ROBE only): one accumulator per aligned run of `dim` floats of the array
    embedding: Literal["sgd", "adagrad", "rowwise_adagrad"] = "adagrad"
    embedding_lr: float = 0.05
    warmup_steps: int = 0        # linear warm-up from 0 to the LRs over this many steps
    decay_start_step: int = 0    # polynomial (power 2) decay to 0 starts here ...
    decay_steps: int = 0         # ... and lasts this many steps; 0 = no decay (MLPerf DLRM schedule)


@dataclass(frozen=True)
class CriteoConfig:
    """How a Criteo TSV becomes a model-ready table (``robeflow train --criteo``)."""

    # ids = 64-bit hash of the hex string mod the feature's table size: one int for all 26
    # features, a list of 26 (C1..C26), or "auto" (each feature's distinct values in the file)
    table_size: int | tuple[int, ...] | Literal["auto"] = 1_000_000
    valid_fraction: float = 0.1  # the last rows (in file order) form the validation window; streamed:
                                 # every (1/fraction)-th row (Terabyte layout: day 23)
    stream: bool = False         # read the file line by line (a folder of parts always is)
    shuffle_buffer: int = 100_000  # streamed: rows held for shuffling
    max_malformed: int = 1000    # streamed: malformed lines skipped (with a warning) before failing


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml."""

    # params.yaml keeps the embedding at the top of the section (`train.embedding.compression`,
    # the knob turned most); it lives in the model config.
    PARAM_ALIASES: ClassVar[dict[str, str]] = {"embedding": "model.embedding"}

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    criteo: CriteoConfig = field(default_factory=CriteoConfig)
    batch_size: int = 2048
    epochs: int = 1
    eval_every: int = 0          # steps between validation AUCs; 0 = once per epoch
    # validation rows scored by each periodic evaluation (a fixed random sample); 0 = all.
    # A run that ends also scores the whole validation window once.
    eval_rows: int = 65536
    target_auc: float | None = None  # stop as soon as the validation AUC reaches this (MLPerf style)
    # the weights of the best periodic validation AUC are kept and restored at the end;
    # stop after this many evaluations without a better one (0 = train every epoch)
    patience: int = 0
    checkpoint_every: int = 0    # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2    # newest checkpoints kept on disk
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0             # torch CPU threads for the step; 0 = torch's default (one per core)
    # data-parallel processes (torch.distributed; each holds the whole model); RANK/WORLD_SIZE
    # in the environment (torchrun, a Kubeflow TrainJob) take precedence
    workers: int = 1
    # id dropout: this share of the rows' ids of each feature in `id_dropout_features` is
    # replaced by the feature's unseen id while training; the server maps users and items the
    # online store does not know to it, so they score near the average (0 = off)
    id_dropout: float = 0.0
    id_dropout_features: list[str] = field(default_factory=lambda: ["user", "item"])
    bf16: bool = True            # bf16 autocast on GPU (ignored on CPU)
    # bf16 autocast on the CPU too: the matmuls in bf16 where the CPU has bf16 instructions
    # (AVX512-BF16, AMX); weights, gradients and optimizer state stay float32
    cpu_bf16: bool = False
    progress: bool = True        # tqdm bar on stderr
    # read the model-ready training split as a stream (memory: the shuffle buffer, not the data);
    # auto = when it has more than `stream_above_rows` rows (its Parquet footers say)
    stream: bool | Literal["auto"] = "auto"
    stream_above_rows: int = 5_000_000
    stream_buffer: int = 500_000  # streamed: rows held for shuffling (~40-300 B a row in memory, x2 at a reshuffle)


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate`` section of params.yaml: metrics on the test window and the gate."""

    gate: Literal["target_auc", "mlperf_dlrm_criteo_1tb", "mlperf_dcnv2_criteo_multihot",
                  "oracle_gap"] = "target_auc"
    target_auc: float = 0.7      # gate = target_auc: the AUC to reach
    oracle_gap: float = 0.02     # gate = oracle_gap: target = oracle AUC - this
    fail_on_gate: bool = False   # exit non-zero when the gate fails (default: record passed=false)
    batch_size: int = 8192
    threads: int = 0             # torch CPU threads for the step; 0 = torch's default
    roc_points: int = 200        # points of the ROC curve written for the plot


@dataclass(frozen=True)
class HistoryInputs:
    """Where the history tower finds its inputs in a model input (built from the feature
    spec by :func:`dlrm.model.history_inputs`; stored in the bundle)."""

    item_table: int                    # the sparse table of the candidate item
    columns: tuple[str, ...]           # the history columns of the input, in order
    item_column: int                   # the column of the events' item ids
    action_column: int | None = None   # the column of the events' action (0 offered, 1 purchased)
    days_column: int | None = None     # the column of days from the event to the row's day
    # (history column, sparse table) pairs whose ids an event may share with the row's own
    # (the item, its category): the target attention's match codes
    match: tuple[tuple[int, int], ...] = ()
