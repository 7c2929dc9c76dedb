"""`robeflow train`: train the DLRM on the model-ready tables (or a Criteo file).

Reads ``<input>/{train,valid}.parquet`` + ``feature_spec.json`` (or ``--criteo PATH``,
whose last rows form the validation window), trains as the ``train`` section of
params.yaml says, and writes the model bundle, checkpoints and training reports.

``train.stream`` (true | false | auto: above ``train.stream_above_rows`` rows) reads the
training split as a stream (:class:`dlrm.stream.ModelInputStream`): memory is set by
``train.stream_buffer``, not by the data. The validation split stays in memory.

``--workers N`` (``train.workers``) trains data-parallel in N local processes; under
torchrun or a Kubeflow TrainJob (RANK/WORLD_SIZE set) the same command is every worker's
entry point. Rank 0 writes the outputs (:mod:`dlrm.distributed`).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrm.threads import torch_threads
from contract.io import StepError, atomic_dir, log, write_json
from contract.params import add_params_args, as_dict, load_config
from dlrm.configs import TrainConfig

STEP = "train"


@dataclass
class TrainStepResult:
    """Where the step wrote its outputs, and its figures."""

    model_dir: Path
    metrics: dict[str, Any]        # also in reports/train/train_metrics.json
    history: list[dict[str, float]]  # one row per validation evaluation (auc_steps.csv)


def train(cfg: TrainConfig, input_dir: Path | None, model_out: Path, checkpoints: Path,
          reports: Path, *, criteo: Path | None = None, resume: bool = False) -> TrainStepResult | None:
    """Trains a DLRM and writes ``model_out`` (bundle), ``checkpoints`` and ``reports``.

    With ``cfg.workers > 1``, or inside a world the environment names (RANK, WORLD_SIZE),
    training is data-parallel and rank 0 writes the outputs; the result is rank 0's (None on
    the other ranks of an environment-launched world).

    Args:
        cfg: the ``train`` section of params.yaml.
        input_dir: the model-ready dir (train/valid parquet + feature_spec.json); ignored
            when ``criteo`` is given.
        model_out: the bundle dir (``model.safetensors`` + ``config.json``), replaced atomically.
        checkpoints: the checkpoint dir (``step-<n>.pt``).
        reports: gets ``train_metrics.json`` and ``auc_steps.csv``.
        criteo: a Criteo TSV/CSV to train on instead of ``input_dir``; a folder of parts
            (or ``train.criteo.stream``) is read as a stream, never whole.
        resume: continue from the newest checkpoint in ``checkpoints``.
    """
    from dlrm.distributed import launch

    return launch(_train, (cfg, input_dir, model_out, checkpoints, reports, criteo, resume), cfg.workers,
                  device=cfg.device, threads=cfg.threads)


def _train(cfg: TrainConfig, input_dir: Path | None, model_out: Path, checkpoints: Path, reports: Path,
           criteo: Path | None, resume: bool) -> TrainStepResult | None:
    """:func:`train` in one process (one rank of a data-parallel run)."""
    from dlrm.bundle import save_model
    from dlrm.distributed import DataParallel
    from contract.model_input import read_spec, split_path
    from contract.spec import ModelInput
    from dlrm.stream import ModelInputStream
    from dlrm.train import train_model

    if criteo is not None and (Path(criteo).is_dir() or cfg.criteo.stream):
        train_in, valid_in, spec = _criteo_stream(cfg, Path(criteo))
        source = str(criteo)
    elif criteo is not None:
        from features.criteo import criteo_model_frame, read_criteo

        if not Path(criteo).exists():
            raise FileNotFoundError(f"Criteo file {criteo} does not exist")
        frame, spec = criteo_model_frame(read_criteo(criteo), cfg.criteo.table_size)
        if not 0 < cfg.criteo.valid_fraction < 1:
            raise ValueError(f"train.criteo.valid_fraction = {cfg.criteo.valid_fraction}; expected 0 < x < 1")
        cut = len(frame) - max(1, round(len(frame) * cfg.criteo.valid_fraction))
        if cut < 1:
            raise ValueError(f"Criteo file {criteo} has {len(frame)} rows; too few to split train/valid")
        train_in = ModelInput.from_frame(frame.iloc[:cut], spec)
        valid_in = ModelInput.from_frame(frame.iloc[cut:], spec)
        source = str(criteo)
    else:
        if input_dir is None:
            raise ValueError("give the model-ready dir (--input) or a Criteo file (--criteo)")
        spec = read_spec(input_dir)
        history = _reads_history(cfg, spec)
        if _streams(cfg, input_dir):
            train_in = _model_input_stream(cfg, input_dir, spec, history)
        else:
            train_in = _read_whole(input_dir, "train", spec, history)
        # the validation rows stay in memory: periodic evaluations score a fixed sample of them
        valid_in = (_read_whole(input_dir, "valid", spec, history) if split_path(input_dir, "valid").exists()
                    else None)
        source = str(input_dir)
    dp = DataParallel.current()
    say = (lambda msg: log(STEP, msg)) if dp.is_main else (lambda _msg: None)
    train_rows = (train_in.num_rows if isinstance(train_in, (ModelInput, ModelInputStream)) else None)
    mode = (f"streamed, {cfg.stream_buffer:,}-row shuffle buffer" if not isinstance(train_in, ModelInput)
            else "in memory")
    say(f"{train_rows if train_rows is not None else 'streamed'} training rows ({mode}), "
        f"{valid_in.num_rows if valid_in else 0} validation rows from {source}; "
        f"backend {cfg.model.embedding.backend}" + (f"; {dp.world_size} data-parallel workers" if dp.parallel else "")
        + (f"; history tower over the last {spec.history.length} events" if _reads_history(cfg, spec) else ""))

    with torch_threads(cfg.threads):
        result = train_model(cfg, spec, train_in, valid_in, checkpoint_dir=Path(checkpoints), resume=resume,
                             log=lambda msg: log(STEP, msg))
    if not dp.is_main:
        return None
    if train_rows is None and result.epochs_completed >= 1:  # a stream: rows of one epoch
        train_rows = round(result.samples / result.epochs_completed)
    metrics = {**result.metrics(), "target_auc": cfg.target_auc, "train_rows": train_rows,
               "valid_rows": valid_in.num_rows if valid_in else 0, "source": source, "workers": dp.world_size,
               "streamed": not isinstance(train_in, ModelInput)}
    with atomic_dir(model_out) as tmp:
        save_model(result.model.cpu(), tmp, spec=spec, config=as_dict(cfg), metrics=metrics)
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "train_metrics.json", metrics)
    with (reports / "auc_steps.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "samples", "wall_s", "auc", "loss"])
        w.writeheader()
        w.writerows(result.history)
    auc = f"{result.last_auc:.5f}" if result.last_auc is not None else "n/a"
    log(STEP, f"{result.steps} steps, {result.samples_per_s:.0f} samples/s, valid AUC {auc}, "
              f"embedding {result.model.embedding_bytes / 1e6:.2f} MB ({result.model.compression:.1f}x) "
              f"-> {model_out}")
    return TrainStepResult(model_dir=Path(model_out), metrics=metrics, history=result.history)



def _streams(cfg: TrainConfig, input_dir: Path) -> bool:
    """Whether ``train.stream`` (true | false | auto) streams the training split; auto: when
    it has more than ``train.stream_above_rows`` rows (read from the Parquet footers)."""
    from contract.model_input import split_num_rows

    if cfg.stream == "auto":
        if cfg.stream_above_rows < 0:
            raise ValueError(f"train.stream_above_rows = {cfg.stream_above_rows}; expected a row count >= 0")
        return split_num_rows(input_dir, "train") > cfg.stream_above_rows
    return bool(cfg.stream)


def _reads_history(cfg: TrainConfig, spec) -> bool:
    """Whether the model trained on ``spec`` has the history tower (it reads the hist_* columns)."""
    from dlrm.model import history_inputs

    return history_inputs(cfg.model, spec) is not None


def _model_input_stream(cfg: TrainConfig, input_dir: Path, spec, history: bool = False):
    """This rank's stream of the model-ready training split (its part of each global batch)."""
    from dlrm.distributed import DataParallel
    from dlrm.stream import ModelInputStream

    if cfg.stream_buffer < 0:
        raise ValueError(f"train.stream_buffer = {cfg.stream_buffer}; expected a row count >= 0 (0 = file order)")
    dp = DataParallel.current()
    return ModelInputStream(input_dir, spec, split="train", batch_size=dp.part_size(cfg.batch_size),
                            shuffle_buffer=cfg.stream_buffer, seed=cfg.seed, rank=dp.rank, world_size=dp.world_size,
                            history=history)


def _read_whole(input_dir: Path, split: str, spec, history: bool = False):
    """One split in memory as a ModelInput: only the columns the model reads."""
    from contract.model_input import read_frame
    from contract.spec import ModelInput
    from dlrm.stream import model_columns

    return ModelInput.from_frame(read_frame(input_dir, split, columns=model_columns(spec, history)), spec,
                                 history=history)


def _criteo_stream(cfg: TrainConfig, path: Path):
    """(training stream, held-out rows in memory, spec) of a Criteo file or folder read as a
    stream (a folder of parts or the day_0..day_23 layout always is)."""
    from dlrm.distributed import DataParallel
    from dlrm.stream import CriteoStream
    from features.criteo import criteo_spec

    if cfg.criteo.table_size == "auto":
        raise ValueError("train.criteo.table_size = 'auto' needs the whole file in memory; a streamed "
                         "Criteo input needs one int or a list of 26 table sizes")
    spec = criteo_spec(cfg.criteo.table_size)
    kw = dict(valid_fraction=cfg.criteo.valid_fraction, max_malformed=cfg.criteo.max_malformed)
    dp = DataParallel.current()  # each rank streams its shard, in its part of the global batch
    stream = CriteoStream(path, spec.table_sizes, batch_size=dp.part_size(cfg.batch_size), seed=cfg.seed,
                          shuffle_buffer=cfg.criteo.shuffle_buffer, rank=dp.rank, world_size=dp.world_size, **kw)
    valid = CriteoStream(path, spec.table_sizes, batch_size=8192, split="valid", **kw).model_input()
    return stream, valid, spec


def _main(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"train.workers={args.workers}"] if args.workers is not None else [])
    cfg = load_config(TrainConfig, STEP, args.params, overrides)
    if args.input is None and args.criteo is None:
        raise StepError("give the model-ready dir (--input) or a Criteo file (--criteo)", exit_code=2)
    train(cfg, args.input, args.model_out, args.checkpoints, args.reports, criteo=args.criteo,
          resume=args.resume)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(STEP, help="train the DLRM (ROBE or another embedding backend)")
    p.add_argument("--input", type=Path, help="model-ready dir: train/valid parquet + feature_spec.json (data/model_input)")
    p.add_argument("--criteo", type=Path, help="train on a Criteo TSV/CSV instead of --input")
    p.add_argument("--model-out", type=Path, required=True, help="model bundle dir (models/model)")
    p.add_argument("--checkpoints", type=Path, required=True, help="checkpoint dir (models/checkpoints)")
    p.add_argument("--reports", type=Path, required=True, help="training reports dir (reports/train)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--workers", type=int, default=None,
                   help="data-parallel processes (overrides train.workers; torchrun's RANK/WORLD_SIZE win)")
    add_params_args(p)
    p.set_defaults(func=_main)
