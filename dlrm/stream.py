"""Streaming input: iterable datasets of training batches whose memory is set by a buffer.

:class:`ModelInputStream` reads the model-ready Parquet tables (``data/model_input``) record
batch by record batch; :class:`CriteoStream` reads Criteo TSV line by line. Both shuffle
with :func:`bounded_shuffle` and shard rows across data-parallel ranks and DataLoader
workers with :func:`shard_of` (row i of the input belongs to shard ``i % num_shards``).

Criteo:

Reads Criteo TSV (``label, I1..I13, C1..C26``, tab-separated, no header), plain or gzip
(told apart by the gzip magic bytes), from one file, a folder of parts (``generate
--format criteo`` writes one), or the Terabyte layout ``day_0`` ... ``day_23``. Memory is
bounded by the shuffle buffer and one batch, whatever the files' length.

- Shuffling: a buffer of ``shuffle_buffer`` rows (:func:`bounded_shuffle`), seeded by
  (seed, epoch, rank, worker).
- Sharding: row i (counted over all files, in order) belongs to shard ``i % num_shards``;
  the shards are ``world_size`` ranks x the DataLoader's workers, so every row is read by
  exactly one worker once per epoch.
- Holding out: in the Terabyte layout day 23 is the evaluation day (MLPerf's rule);
  otherwise ``valid_fraction`` f of the rows, evenly spread, are held out (row i when
  ``floor((i + 1) * f) > floor(i * f)``: every (1/f)-th row). ``split`` picks ``"train"``, ``"valid"`` or ``"all"``.
- Malformed lines (wrong field count, a label not 0/1, a non-integer count) are skipped,
  counted and reported with a warning naming the file and line number; past
  ``max_malformed`` of them the stream raises ValueError.

The ids are those of the in-memory transform: ``blake2b_64(hex string) mod table_size``
per feature (a missing value hashes as the empty string); dense values ``log1p(max(x, 0))``.
"""

from __future__ import annotations

import gzip
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from contract.hashing import stable_hash64
from contract.model_input import iter_split_batches, split_num_rows
from contract.spec import FeatureSpec, ModelInput
from dlrm.data import Batch, TensorData

NUM_DENSE, NUM_SPARSE = 13, 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
EVAL_DAY = 23  # MLPerf DLRM on Criteo Terabyte: day 23 is held out for evaluation
_DAY = re.compile(r"^day_(\d+)(\..*)?$")
_SPLITS = ("train", "valid", "all")


def criteo_files(path: Path | str) -> list[Path]:
    """The Criteo files under ``path``: the file itself, or a folder's regular files
    (``day_<n>`` files in day order when the folder has them, else by name), leaving out
    hidden files and those whose name starts with ``_`` (``_SUCCESS``, ``_generate.json``:
    what writers put beside their parts)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"Criteo input {path} does not exist")
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith((".", "_")))
    days = [f for f in files if _DAY.match(f.name)]
    if days:
        return sorted(days, key=lambda f: int(_DAY.match(f.name).group(1)))
    if not files:
        raise ValueError(f"Criteo folder {path} holds no files")
    return files


def day_of(path: Path) -> int | None:
    """n for a ``day_<n>`` file (Terabyte layout), else None."""
    m = _DAY.match(Path(path).name)
    return int(m.group(1)) if m else None


def _open_text(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="\n")
    return open(path, encoding="utf-8", errors="replace", newline="\n")


def _parse(line: str) -> tuple[float, list[float], list[str]] | None:
    """(label, 13 counts, 26 hex strings) of one TSV line, or None when malformed."""
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != NUM_FIELDS or fields[0] not in ("0", "1"):
        return None
    try:
        dense = [float(int(x)) if x else 0.0 for x in fields[1:1 + NUM_DENSE]]
    except ValueError:
        return None
    return float(fields[0]), dense, fields[1 + NUM_DENSE:]


# ---------------------------------------------------------------------------------------
# Shared pieces: sharding, the bounded shuffle, the seeded stream base class
# ---------------------------------------------------------------------------------------

C = TypeVar("C")


def shard_of(rank: int, world_size: int) -> tuple[int, int]:
    """(number of shards, this process's shard): ``world_size`` ranks x the DataLoader's
    workers (1 outside a DataLoader worker), so every row goes to exactly one reader."""
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    return world_size * workers, rank * workers + worker


def bounded_shuffle(chunks: Iterable[C], capacity: int, rng: np.random.Generator, *,
                    size: Callable[[C], int], concat: Callable[[list[C]], C],
                    take: Callable[[C, np.ndarray], C]) -> Iterator[C]:
    """Chunks of rows in a random order that never holds more than ``capacity`` rows (plus
    the chunk being read): rows are gathered until ``capacity`` are held, then all of them
    are permuted, all but ``capacity // 2`` emitted (as one chunk) and the rest kept for the
    next round; the rows left at the end are emitted permuted. A row is emitted at most
    ``capacity`` positions before its place in the input; ``capacity <= 1`` keeps the order.

    Args:
        chunks: the input, chunk by chunk (a chunk: any container of rows).
        capacity: rows held for shuffling.
        rng: the shuffle's random stream (seed it by epoch for reproducible runs).
        size, concat, take: a chunk's row count, several chunks as one, and the rows
            ``idx`` (int64 array) of a chunk, in that order.
    """
    if capacity <= 1:
        yield from chunks
        return
    held: list[C] = []
    n, keep = 0, capacity // 2
    for chunk in chunks:
        held.append(chunk)
        n += size(chunk)
        if n >= capacity:
            pool, perm = concat(held), rng.permutation(n)
            yield take(pool, perm[:n - keep])
            held, n = [take(pool, perm[n - keep:])], keep
    if n:
        yield take(concat(held), rng.permutation(n))


class _ShardedStream(IterableDataset):
    """What both streams share: batch size, shuffle buffer, seed and epoch, rank and world."""

    def __init__(self, *, batch_size: int, shuffle_buffer: int, seed: int, epoch: int, rank: int,
                 world_size: int) -> None:
        super().__init__()
        if batch_size < 1 or shuffle_buffer < 0:
            raise ValueError(f"batch_size={batch_size}, shuffle_buffer={shuffle_buffer}: expected >= 1 and >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}: expected 0 <= rank < world_size={world_size}")
        self.batch_size, self.shuffle_buffer = int(batch_size), int(shuffle_buffer)
        self.seed, self.epoch, self.rank, self.world_size = int(seed), int(epoch), int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle as epoch ``epoch`` next time."""
        self.epoch = int(epoch)

    def _shard(self) -> tuple[int, int]:
        return shard_of(self.rank, self.world_size)

    def _rng(self) -> np.random.Generator:
        """The shuffle's random stream: a function of (seed, epoch, rank, worker) only."""
        info = get_worker_info()
        return np.random.default_rng([self.seed, self.epoch, self.rank, info.id if info is not None else 0])


class CriteoStream(_ShardedStream):
    """Batches (:class:`dlrm.data.Batch`, single-hot: ``offsets = arange(B*26 + 1)``) of a
    Criteo TSV stream; see the module docstring for shuffling, sharding and holding out.

    Args:
        path: a file, a folder of parts or a ``day_<n>`` folder.
        table_sizes: one table size per categorical feature (26), or one int for all.
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        shuffle_buffer: rows held for shuffling (0 = file order).
        seed, epoch: the shuffle's seed; ``set_epoch`` changes the epoch.
        rank, world_size: this process's shard of a data-parallel run.
        split: ``train``, ``valid`` or ``all`` rows.
        valid_fraction: rows held out for validation when the input is not the Terabyte layout.
        max_malformed: malformed lines tolerated before ValueError.
    """

    def __init__(
        self, path: Path | str, table_sizes: int | Sequence[int], *, batch_size: int,
        shuffle_buffer: int = 0, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
        split: str = "train", valid_fraction: float = 0.1, max_malformed: int = 1000,
    ) -> None:
        super().__init__(batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed, epoch=epoch,
                         rank=rank, world_size=world_size)
        sizes = [table_sizes] * NUM_SPARSE if isinstance(table_sizes, int) else list(table_sizes)
        if len(sizes) != NUM_SPARSE or min(sizes) < 1:
            raise ValueError(f"table_sizes={table_sizes!r}: expected an int >= 1 or {NUM_SPARSE} of them")
        if split not in _SPLITS:
            raise ValueError(f"split={split!r}: expected one of {_SPLITS}")
        if not 0 <= valid_fraction < 1:
            raise ValueError(f"valid_fraction={valid_fraction}: expected 0 <= x < 1")
        self.files = criteo_files(path)
        self.table_sizes = np.asarray(sizes, dtype=np.uint64)
        self.split, self.valid_fraction, self.max_malformed = split, float(valid_fraction), int(max_malformed)
        self.terabyte = any(day_of(f) == EVAL_DAY for f in self.files)
        self.malformed = 0  # malformed lines seen by this process in the last epoch

    def _held_out(self, path: Path, row: int) -> bool:
        if self.terabyte:
            return day_of(path) == EVAL_DAY
        f = self.valid_fraction  # every (1/f)-th row: exactly f of any run of rows, evenly spread
        return int((row + 1) * f) > int(row * f)

    def rows(self) -> Iterator[tuple[float, list[float], list[str]]]:
        """This shard's parsed rows of the split, in file order (no shuffling)."""
        shards, shard = self._shard()
        self.malformed = 0
        row = -1
        for path in self.files:
            with _open_text(path) as fh:
                for lineno, line in enumerate(fh, start=1):
                    row += 1
                    if row % shards != shard:
                        continue
                    if self.split != "all" and self._held_out(path, row) != (self.split == "valid"):
                        continue
                    parsed = _parse(line)
                    if parsed is None:
                        self._malformed(path, lineno, line)
                        continue
                    yield parsed

    def _malformed(self, path: Path, lineno: int, line: str) -> None:
        self.malformed += 1
        if self.malformed > self.max_malformed:
            raise ValueError(f"{path}: more than {self.max_malformed} malformed lines (the last at line "
                             f"{lineno}); expected {NUM_FIELDS} tab-separated fields with a 0/1 label "
                             f"and integer counts")
        warnings.warn(f"{path}:{lineno}: skipped a malformed Criteo line ({line[:60]!r})", stacklevel=2)

    def _shuffled(self) -> Iterator[tuple[float, list[float], list[str]]]:
        chunks = bounded_shuffle(([row] for row in self.rows()), self.shuffle_buffer, self._rng(), size=len,
                                 concat=lambda cs: [row for c in cs for row in c],
                                 take=lambda c, idx: [c[i] for i in idx])
        for chunk in chunks:
            yield from chunk

    def __iter__(self) -> Iterator[Batch]:
        chunk: list = []
        for item in self._shuffled():
            chunk.append(item)
            if len(chunk) == self.batch_size:
                yield self._batch(chunk)
                chunk = []
        if chunk:
            yield self._batch(chunk)

    def model_input(self) -> ModelInput:
        """All rows of this stream (one pass, in stream order) as one in-memory ModelInput,
        e.g. the held-out validation rows (``split="valid"``)."""
        batches = list(self)
        if not batches:
            raise ValueError(f"the {self.split} rows of {self.files[0].parent} are empty")
        values = torch.cat([b.values for b in batches]).numpy()
        return ModelInput(dense=torch.cat([b.dense for b in batches]).numpy(), sparse_values=values,
                          sparse_offsets=np.arange(values.size + 1, dtype=np.int64),
                          labels=torch.cat([b.labels for b in batches]).numpy())

    def _batch(self, rows: list) -> Batch:
        b = len(rows)
        labels = torch.tensor([r[0] for r in rows], dtype=torch.float32)  # (B,)
        dense = np.log1p(np.maximum(np.array([r[1] for r in rows], dtype=np.float64), 0.0))  # (B, 13)
        cats = np.array([r[2] for r in rows], dtype=object)  # (B, 26)
        ids = np.empty((b, NUM_SPARSE), dtype=np.int64)
        for t in range(NUM_SPARSE):
            uniq, inv = np.unique(cats[:, t].astype(str), return_inverse=True)
            ids[:, t] = (stable_hash64(uniq) % self.table_sizes[t]).astype(np.int64)[inv.reshape(-1)]
        return Batch(torch.from_numpy(dense.astype(np.float32)), torch.from_numpy(ids.reshape(-1)),
                     torch.arange(b * NUM_SPARSE + 1, dtype=torch.int64), labels)


# ---------------------------------------------------------------------------------------
# The model-ready Parquet tables
# ---------------------------------------------------------------------------------------

def model_columns(spec: FeatureSpec, history: bool = False) -> list[str]:
    """The columns of a model-ready table the model reads: its features and the label (not
    ``event_id`` or timestamps), and the user history's list columns when ``history`` (a
    model with the history tower) and the spec has them."""
    hist = spec.history.names if history and spec.history is not None else []
    return [f.name for f in (*spec.dense, *spec.sparse)] + [spec.label] + hist


def _concat_history(chunks: Sequence[ModelInput]) -> dict[str, np.ndarray]:
    """The history arrays of several ModelInputs as one (all or none carry one)."""
    if not chunks[0].has_history:
        return {}
    shifts = np.cumsum([0] + [c.history_values.shape[0] for c in chunks[:-1]])
    offsets = [c.history_offsets[:-1] + s for c, s in zip(chunks, shifts)]
    offsets.append(np.array([shifts[-1] + chunks[-1].history_values.shape[0]], dtype=np.int64))
    return {"history_values": np.concatenate([c.history_values for c in chunks]),
            "history_offsets": np.concatenate(offsets)}


def concat_inputs(chunks: Sequence[ModelInput]) -> ModelInput:
    """Several ModelInputs (with labels) as one, rows in order."""
    if len(chunks) == 1:
        return chunks[0]
    shifts = np.cumsum([0] + [c.sparse_values.size for c in chunks[:-1]])
    offsets = [c.sparse_offsets[:-1] + s for c, s in zip(chunks, shifts)]
    offsets.append(np.array([shifts[-1] + chunks[-1].sparse_values.size], dtype=np.int64))
    return ModelInput(dense=np.concatenate([c.dense for c in chunks]),
                      sparse_values=np.concatenate([c.sparse_values for c in chunks]),
                      sparse_offsets=np.concatenate(offsets),
                      labels=np.concatenate([c.labels for c in chunks]), **_concat_history(chunks))


def take_rows(inputs: ModelInput, rows: np.ndarray, num_tables: int) -> ModelInput:
    """The rows ``rows`` (int64 array, any order) of ``inputs`` as a new ModelInput."""
    b = TensorData(inputs, num_tables).batch(torch.from_numpy(np.asarray(rows, dtype=np.int64)))
    hist = ({} if b.history is None else
            {"history_values": b.history.numpy(), "history_offsets": b.history_offsets.numpy()})
    return ModelInput(dense=b.dense.numpy(), sparse_values=b.values.numpy(), sparse_offsets=b.offsets.numpy(),
                      labels=b.labels.numpy(), **hist)


def record_batch_input(batch, spec: FeatureSpec, history: bool = False) -> ModelInput:
    """An Arrow record batch of a model-ready table -> ModelInput, through the one builder
    (:meth:`ModelInput.from_columns`); with the user history when ``history``."""
    columns = {}
    for f in spec.dense:
        columns[f.name] = batch.column(f.name).to_numpy(zero_copy_only=False)  # nulls -> NaN: refused
    for f in spec.sparse:
        # multi-hot: an object array of id arrays (None for a null list)
        columns[f.name] = batch.column(f.name).to_numpy(zero_copy_only=False)
    columns[spec.label] = batch.column(spec.label).to_numpy(zero_copy_only=False)
    if history:
        for name in spec.history.names:   # object arrays of id arrays (None: no events)
            columns[name] = batch.column(name).to_numpy(zero_copy_only=False)
    return ModelInput.from_columns(columns, spec, history=history)


class ModelInputStream(_ShardedStream):
    """Batches (:class:`dlrm.data.Batch`) of one split of the model-ready tables, read as a
    stream: the Parquet file (or each part of a folder, in name order) record batch by
    record batch, only the model's columns (:func:`model_columns`).

    Memory is the shuffle buffer plus one record batch and one training batch, whatever
    the split's length. Row i of the split (counted over its files in order) belongs to
    shard ``i % (world_size x DataLoader workers)`` (:func:`shard_of`): each rank decodes
    the columns of every row and keeps its own, so the ranks together see every row once
    per epoch. Rows are shuffled by :func:`bounded_shuffle` seeded by (seed, epoch, rank,
    worker): a run, and a resumed run, reads the same batches.

    Args:
        data_dir: the model-ready dir (``{split}.parquet``: a file or a folder of parts).
        spec: its feature spec (``feature_spec.json``).
        split: ``train``, ``valid`` or ``test``.
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        shuffle_buffer: rows held for shuffling (0 = file order).
        seed, epoch: the shuffle's seed; ``set_epoch`` changes the epoch.
        rank, world_size: this process's shard of a data-parallel run.
        read_rows: rows per Parquet record batch read.
        history: read the user history columns too (a model with the history tower).

    Example:
        >>> stream = ModelInputStream("data/model_input", spec, batch_size=2048,
        ...                           shuffle_buffer=500_000)  # doctest: +SKIP
        >>> for epoch in range(2):
        ...     stream.set_epoch(epoch)
        ...     for batch in stream: ...
    """

    def __init__(self, data_dir: Path | str, spec: FeatureSpec, *, split: str = "train", batch_size: int,
                 shuffle_buffer: int = 0, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 read_rows: int = 65536, history: bool = False) -> None:
        super().__init__(batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed, epoch=epoch,
                         rank=rank, world_size=world_size)
        if read_rows < 1:
            raise ValueError(f"read_rows={read_rows}: expected >= 1")
        self.data_dir, self.spec, self.split, self.read_rows = Path(data_dir), spec, split, int(read_rows)
        if history and spec.history is None:
            raise ValueError("history=True but the feature spec records no user history")
        self.history = bool(history)
        self.num_rows = split_num_rows(self.data_dir, split)  # of all shards, from the Parquet footers

    def chunks(self) -> Iterator[ModelInput]:
        """This shard's rows in file order (no shuffling), one ModelInput per record batch."""
        import pyarrow as pa

        shards, shard = self._shard()
        start = 0  # the split's row index of the batch's first row
        for rb in iter_split_batches(self.data_dir, self.split, model_columns(self.spec, self.history),
                                     self.read_rows):
            n = rb.num_rows
            if shards > 1:
                rb = rb.take(pa.array(np.arange((shard - start) % shards, n, shards, dtype=np.int64)))
            start += n
            if rb.num_rows:
                yield record_batch_input(rb, self.spec, self.history)

    def __iter__(self) -> Iterator[Batch]:
        T, bs = len(self.spec.sparse), self.batch_size
        chunks = bounded_shuffle(self.chunks(), self.shuffle_buffer, self._rng(), size=lambda c: c.num_rows,
                                 concat=concat_inputs, take=lambda c, idx: take_rows(c, idx, T))
        rest: ModelInput | None = None  # rows short of a batch, carried to the next chunk
        for chunk in chunks:
            n, start = chunk.num_rows, 0
            if rest is not None:  # complete the carried rows with the chunk's first (copies < a batch)
                start = min(bs - rest.num_rows, n)
                rest = concat_inputs([rest, chunk.slice(0, start, T)])
                if rest.num_rows < bs:
                    continue
                yield TensorData(rest, T).range_batch(0, bs)
                rest = None
            data, full = TensorData(chunk, T), start + (n - start) // bs * bs
            for first in range(start, full, bs):
                yield data.range_batch(first, first + bs)  # views of the chunk, no copy
            rest = chunk.slice(full, n, T) if full < n else None
        if rest is not None:
            yield TensorData(rest, T).range_batch(0, rest.num_rows)
