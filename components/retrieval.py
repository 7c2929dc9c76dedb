"""`robeflow retrieval`: train the whole-catalogue retrieval model and measure it on the test window.

For every purchase in the training splits (``retrieval.fit_splits`` of the model-ready
tables), the tower reads the event's context features (``retrieval.context``: user, query
terms, favourite category, device, country, hour, weekday: nothing of the item) and the
purchased item is the label of a softmax over the catalogue: every item_id of the model-ready
tables. The output layer is trained as ``retrieval.method`` says (``lsh``: SLIDE's
LSH-sampled softmax; ``full``, ``sampled`` (log-Q), ``inbatch``; see :mod:`dlrm.retrieval`).

On the test window's purchases it ranks all items exactly and writes
``reports/retrieval_metrics.json``: ``recall_at_10``, ``recall_at_100``, ``p_at_1`` (with
Wilson 95% intervals ``*_lo``/``*_hi``), the same for ranking by training popularity, the
share of the exact top 100 the LSH tables return (method ``lsh``), and, with
``--validated`` (the generated world's transactions), the oracle's: every item ranked by
the planted probability that the purchase was that item (:mod:`generator.oracle`; the world
is rebuilt from the ``generate`` section of the same params file). The model bundle
(``model.safetensors``, ``items.json``, ``config.json``; no pickle) goes to ``--model-out``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from contract.io import StepError, atomic_dir, log, write_json
from contract.params import add_params_args, as_dict, from_dict, load_config
from dlrm.threads import torch_threads

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from dlrm.retrieval import RetrievalConfig
    from generator.config import GenerateConfig

STEP = "retrieval"
KS = (10, 100)
# features that describe the offered item: a tower reading them would see the label
ITEM_SIDE = frozenset({"item", "category_l1", "category_l2", "category_l3", "brand", "price_band"})
SPLITS = ("train", "valid", "test")
EVAL_CELLS = 1 << 25   # most exact scores (test rows x items) held at once: 128 MB of float32


# the fields of dlrm.retrieval.RetrievalConfig, named at the top of the section (a test keeps
# this list whole; naming them here keeps torch out of the CLI's start-up)
MODEL_KEYS: tuple[str, ...] = ("method", "embedding", "tower", "dim", "lsh", "negatives", "logq", "item_optimizer",
                               "item_lr", "init_scale", "tower_lr", "embedding_lr", "batch_size", "epochs", "seed")


def _model_config(values: "dict | RetrievalConfig") -> "RetrievalConfig":
    """The section's model settings (a config, or a dict of the settings that differ from
    :func:`_default_model`'s) as a RetrievalConfig."""
    from dlrm.retrieval import RetrievalConfig

    if isinstance(values, RetrievalConfig):
        return values

    def merged(base: dict, new: dict) -> dict:
        return {**base, **{k: merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                           for k, v in new.items()}}

    return from_dict(RetrievalConfig, merged(as_dict(_default_model()), values), STEP)


def _default_model() -> "RetrievalConfig":
    from dlrm.configs import EmbeddingConfig
    from dlrm.retrieval import RetrievalConfig
    from gpu_ops.lsh import LSHConfig

    # sized for the default world (5K items, ~34K training purchases): ~15 s of training on one
    # core. At 5K items the exact softmax is cheaper than hashing (lsh: ~4x slower, lower recall);
    # SLIDE pays from ~100K items (benchmarks/retrieval_bench.py)
    return RetrievalConfig(
        method="full", embedding=EmbeddingConfig(backend="robe", dim=16, compression=100.0, block=8),
        tower=(128,), dim=64, epochs=4, batch_size=256,
        lsh=LSHConfig(bits=6, tables=16, bucket_size=64, random_negatives=64))


@dataclass(frozen=True)
class RetrievalStepConfig:
    """The ``retrieval`` section of params.yaml. The model's own settings (``method``,
    ``epochs``, ``lsh``, ...) sit at the top of the section; they fill ``model``."""

    context: tuple[str, ...] = ("user", "query", "fav_category_l1", "device", "country", "hour",
                                "day_of_week")     # sparse features the tower reads
    fit_splits: tuple[str, ...] = ("train", "valid")  # the purchases it trains on
    threads: int = 1                               # torch CPU threads (0 = one per core)
    eval_batch_size: int = 512                     # test rows ranked against all items at a time
    model: Any = field(default_factory=_default_model)  # a dlrm.retrieval.RetrievalConfig

    PARAM_ALIASES: ClassVar[dict[str, str]] = {k: f"model.{k}" for k in MODEL_KEYS}

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", _model_config(self.model))
        if not self.context:
            raise ValueError("retrieval.context is empty; name the sparse features the tower reads")
        leak = sorted(set(self.context) & ITEM_SIDE)
        if leak:
            raise ValueError(f"retrieval.context = {list(self.context)} names item feature(s) {leak}: "
                             f"the tower must not see the item it predicts")
        bad = [s for s in self.fit_splits if s not in ("train", "valid")]
        if bad or not self.fit_splits:
            raise ValueError(f"retrieval.fit_splits = {list(self.fit_splits)}; expected some of train, valid")
        if self.threads < 0 or self.eval_batch_size < 1:
            raise ValueError(f"retrieval.threads = {self.threads} (>= 0), eval_batch_size = "
                             f"{self.eval_batch_size} (>= 1)")

    def as_params(self) -> dict[str, Any]:
        """The section as params.yaml writes it (the model's settings at the top)."""
        d = as_dict(self)
        return {**{k: v for k, v in d.items() if k != "model"}, **d["model"]}


@dataclass
class RetrievalStepResult:
    """The step's figures (also in the metrics JSON) and where the bundle went."""

    metrics: dict[str, Any]
    model_dir: Path
    model: Any = None        # the trained dlrm.retrieval.RetrievalModel


# ---------------------------------------------------------------------------- data


def _purchases(input_dir: Path, split: str, columns: list[str]) -> "pd.DataFrame":
    from contract.model_input import read_frame

    frame = read_frame(input_dir, split, columns=[*columns, "purchased"])
    return frame[frame["purchased"] == 1].reset_index(drop=True)


def _context_spec(input_dir: Path, context: tuple[str, ...]):
    """The sparse-only FeatureSpec of the context features (from the data's spec)."""
    from contract.model_input import read_spec
    from contract.spec import FeatureSpec

    spec = read_spec(input_dir)
    by_name = {f.name: f for f in spec.sparse}
    missing = [c for c in context if c not in by_name]
    if missing:
        raise ValueError(f"retrieval.context names {missing}, not sparse features of {input_dir} "
                         f"(they are {sorted(by_name)})")
    return FeatureSpec(dense=(), sparse=tuple(by_name[c] for c in context), label=spec.label,
                       version=f"{spec.version}-retrieval-context", extra={"source_version": spec.version})


def _to_data(frame: "pd.DataFrame", spec, index: dict[str, int]):
    import numpy as np
    import torch

    from contract.spec import ModelInput
    from dlrm.retrieval import RetrievalData

    m = ModelInput.from_frame(frame, spec)
    items = frame["item_id"].astype(str).map(index)
    if items.isna().any():
        raise ValueError(f"purchased items outside the catalogue: {frame['item_id'][items.isna()].head(3).tolist()}")
    return RetrievalData(torch.from_numpy(m.sparse_values), torch.from_numpy(m.sparse_offsets),
                         torch.from_numpy(items.to_numpy(dtype=np.int64)), len(spec.sparse))


# ---------------------------------------------------------------------------- metrics


def wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion ``hits / n`` ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def ranked_metrics(top: "np.ndarray", items: "np.ndarray", prefix: str = "") -> dict[str, float]:
    """Recall@10/@100 and P@1 of ranked lists ``top`` ``(n, K)`` with intervals, keys prefixed."""
    import numpy as np

    match = np.asarray(top) == np.asarray(items)[:, None]                  # (n, K)
    n, out = len(items), {}
    for name, hits in [(f"recall_at_{k}", match[:, :k].any(1)) for k in KS] + [("p_at_1", match[:, 0])]:
        h = int(hits.sum())
        lo, hi = wilson(h, n)
        out.update({f"{prefix}{name}": h / max(n, 1), f"{prefix}{name}_lo": lo, f"{prefix}{name}_hi": hi})
    return out


# ---------------------------------------------------------------------------- the oracle


def oracle_top(world_cfg: "GenerateConfig", validated: Path, test: "pd.DataFrame", catalogue: list[str],
               k: int) -> "np.ndarray":
    """``(n, k)`` catalogue positions, best first, of each test purchase by the planted model.

    Rebuilds the generator's world from ``world_cfg`` and checks that it is the world of the
    data (every test purchase's item exists there with the same l3 category and brand).
    """
    import numpy as np
    import pandas as pd

    from contract.transactions import partitions
    from generator.events import build_world, warm_history
    from generator.oracle import PurchaseEvents, oracle_top_k, purchase_history

    world = build_world(world_cfg)
    world_index = {item: k for k, item in enumerate(world.item_ids)}
    in_world = np.array([world_index.get(i, -1) for i in catalogue])
    if (in_world < 0).any():
        raise StepError(f"catalogue items {np.array(catalogue)[in_world < 0][:3].tolist()} are not in the world of "
                        f"the generate params (seed {world_cfg.seed}, {world_cfg.items} items): the oracle needs "
                        f"the params the data was generated with")
    cols = ["event_id", "user_id", "item_id", "query", "event_timestamp", "device", "country", "position",
            "category_l3", "brand", "purchased"]
    frames = [pd.read_parquet(f, columns=cols) for _, files in partitions(validated) for f in files]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    bought = rows[rows["purchased"] == 1]
    events = bought.set_index("event_id").reindex(test["event_id"].astype(str))
    if events["user_id"].isna().any():
        raise StepError(f"{int(events['user_id'].isna().sum())} test purchases are not in {validated}")
    item = events["item_id"].map(world_index).to_numpy(dtype=np.int64)
    names = np.array(world.leaf_names, dtype=object)[world.item_leaf[item], 2]
    brands = world.brand_names[world.item_brand[item]]
    if (names != events["category_l3"].to_numpy()).any() or (brands != events["brand"].to_numpy()).any():
        raise StepError(f"the world rebuilt from the generate params (seed {world_cfg.seed}) gives the test "
                        f"purchases other categories or brands than {validated}: not the data's world")
    ev = PurchaseEvents.from_frame(events.reset_index(), world_cfg, world)
    # purchase history of the test users: the generator's warm start + the data's purchases
    warm = warm_history(world_cfg, world)
    users = set(ev.user.tolist())
    bday = ((pd.to_datetime(bought["event_timestamp"], utc=True) - world_cfg.window[0])
            // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)
    n_items = len(world.item_ids)
    history = purchase_history(
        np.concatenate([warm.key // n_items, bought["user_id"].map({u: k for k, u in enumerate(world.user_ids)})
                        .to_numpy(dtype=np.int64)]),
        np.concatenate([warm.key % n_items, bought["item_id"].map(world_index).to_numpy(dtype=np.int64)]),
        np.concatenate([warm.day, bday]), keep=users)
    top = oracle_top_k(world_cfg, world, ev, k, catalogue=in_world, history=history)  # world indices
    position = np.full(n_items, -1)
    position[in_world] = np.arange(len(catalogue))
    return position[top]


# ---------------------------------------------------------------------------- core


def retrieval(cfg: RetrievalStepConfig, input_dir: Path, model_out: Path, metrics_out: Path, *,
              validated: Path | None = None, world: "GenerateConfig | None" = None) -> RetrievalStepResult:
    """Trains the retrieval model on the training purchases and measures it on the test window.

    Args:
        cfg: the ``retrieval`` section of params.yaml.
        input_dir: the model-ready dir (``{train,valid,test}.parquet`` + ``feature_spec.json``).
        model_out: the bundle dir, replaced atomically.
        metrics_out: the metrics JSON (reports/retrieval_metrics.json).
        validated: the generated world's validated transactions (data/validated): with ``world``
            (the ``generate`` section it was generated with), the oracle's metrics are added.
        world: the generate config of the data's world.
    """
    import numpy as np
    import pandas as pd
    import torch

    from contract.model_input import read_frame
    from dlrm.bundle import save_retrieval
    from dlrm.retrieval import RetrievalModel, popularity, retrieval_overlap, train_retrieval

    input_dir = Path(input_dir)
    t0 = time.perf_counter()
    spec = _context_spec(input_dir, cfg.context)
    # the catalogue: every item offered in any window, in a fixed order
    catalogue = sorted(set().union(*(set(read_frame(input_dir, s, columns=["item_id"])["item_id"].astype(str))
                                     for s in SPLITS)))
    index = {item: k for k, item in enumerate(catalogue)}
    cols = ["event_id", "user_id", "item_id", *cfg.context]
    fit = pd.concat([_purchases(input_dir, s, cols) for s in cfg.fit_splits], ignore_index=True)
    test = _purchases(input_dir, "test", cols)
    if len(fit) == 0 or len(test) == 0:
        raise StepError(f"{len(fit)} training and {len(test)} test purchases in {input_dir}: retrieval needs both")
    train_data, test_data = _to_data(fit, spec, index), _to_data(test, spec, index)
    pop = popularity(train_data.items, len(catalogue))
    log(STEP, f"{train_data.num_rows:,} purchases in {'+'.join(cfg.fit_splits)}, {test_data.num_rows:,} in test; "
              f"{len(catalogue):,} items; method {cfg.model.method}; context {', '.join(cfg.context)}")

    with torch_threads(cfg.threads):
        model = RetrievalModel(spec.table_sizes, len(catalogue), cfg.model, popularity=pop)
        steps_per_epoch = -(-train_data.num_rows // cfg.model.batch_size)
        trained = train_retrieval(model, train_data, eval_every=steps_per_epoch, log=lambda m: log(STEP, m))
        model.eval()
        with torch.no_grad():
            rows = max(1, min(cfg.eval_batch_size, EVAL_CELLS // len(catalogue)))   # (rows, N) scores at a time
            top = torch.cat([model.recommend(b, min(max(KS), len(catalogue)))
                             for b in test_data.batches(rows)]).numpy()
            lsh_overlap = retrieval_overlap(model, test_data, k=min(100, len(catalogue))) \
                if cfg.model.method == "lsh" else None
    labels = test_data.items.numpy()
    metrics: dict[str, Any] = {**ranked_metrics(top, labels), "items": len(catalogue), "method": cfg.model.method}
    metrics["random_recall_at_100"] = min(100, len(catalogue)) / len(catalogue)
    popular = np.argsort(-pop.numpy(), kind="stable")[:max(KS)]
    metrics.update({k: v for k, v in ranked_metrics(np.tile(popular, (len(labels), 1)), labels, "popular_").items()
                    if not k.endswith(("_lo", "_hi"))})
    metrics["lsh_recall_vs_exact_at_100"] = lsh_overlap
    metrics["oracle_recall_at_100"] = None
    if validated is not None:
        if world is None:
            raise ValueError("the oracle needs the generate config of the data's world")
        t1 = time.perf_counter()
        otop = oracle_top(world, Path(validated), test, catalogue, max(KS))
        om = ranked_metrics(otop, labels, "oracle_")
        metrics.update({k: v for k, v in om.items() if k.startswith(("oracle_recall", "oracle_p_at_1"))})
        log(STEP, f"oracle ranked {len(labels):,} test purchases against {len(catalogue):,} items "
                  f"in {time.perf_counter() - t1:.1f}s")
    metrics.update({"train_purchases": train_data.num_rows, "test_purchases": test_data.num_rows,
                    "train_steps": trained.steps, "train_seconds": trained.train_seconds,
                    "final_loss": trained.rows[-1]["loss"] if trained.rows else None,
                    "embedding_bytes": model.tower.embedding.num_bytes,
                    "seconds": time.perf_counter() - t0})

    with atomic_dir(model_out) as tmp:
        save_retrieval(model, tmp, spec=spec, items=catalogue, popularity=pop, config=cfg.as_params(),
                       metrics=metrics)
    write_json(metrics_out, metrics)
    oracle = f", oracle R@100 {metrics['oracle_recall_at_100']:.4f}" if metrics["oracle_recall_at_100"] is not None else ""
    log(STEP, f"test R@10 {metrics['recall_at_10']:.4f}, R@100 {metrics['recall_at_100']:.4f} "
              f"[{metrics['recall_at_100_lo']:.4f}, {metrics['recall_at_100_hi']:.4f}], P@1 {metrics['p_at_1']:.4f}"
              f"{oracle}; popular R@100 {metrics['popular_recall_at_100']:.4f}; {metrics['seconds']:.1f}s "
              f"-> {metrics_out}, {model_out}")
    return RetrievalStepResult(metrics=metrics, model_dir=Path(model_out), model=model)


# ---------------------------------------------------------------------------- CLI


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(RetrievalStepConfig, STEP, args.params, args.overrides)
    world = None
    if args.validated is not None:
        from generator.config import GenerateConfig

        world = load_config(GenerateConfig, "generate", args.params, [])
    retrieval(cfg, args.input, args.model_out, args.metrics, validated=args.validated, world=world)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(STEP, help="train and evaluate whole-catalogue retrieval (SLIDE LSH softmax or baselines)")
    p.add_argument("--input", type=Path, required=True, help="model-ready dir (data/model_input)")
    p.add_argument("--model-out", type=Path, required=True, help="retrieval bundle dir (models/retrieval)")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON (reports/retrieval_metrics.json)")
    p.add_argument("--validated", type=Path,
                   help="the generated world's validated transactions (data/validated): adds the oracle's "
                        "metrics, rebuilding the world from the generate section of --params")
    add_params_args(p)
    p.set_defaults(func=_main)
