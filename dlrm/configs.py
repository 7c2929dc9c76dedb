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
class ModelConfig:
    """DLRM shape. Input widths (dense features, table sizes) come from the FeatureSpec."""

    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    bottom_mlp: tuple[int, ...] = (64, 32)   # hidden widths; a last layer to embedding.dim is added
    top_mlp: tuple[int, ...] = (64, 32)      # hidden widths; a last layer to 1 logit is added
    interaction: Literal["dot", "dcn"] = "dot"  # pairwise dots (DLRM) or DCNv2 cross layers
    dcn_layers: int = 3          # dcn: number of cross layers
    dcn_rank: int = 64           # dcn: rank of the low-rank cross weight (0 = full rank)


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
    bf16: bool = True            # bf16 autocast on GPU (ignored on CPU)
    progress: bool = True        # tqdm bar on stderr


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
