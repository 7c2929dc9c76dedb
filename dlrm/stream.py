"""Streaming Criteo input: an iterable dataset of training batches read line by line.

Reads Criteo TSV (``label, I1..I13, C1..C26``, tab-separated, no header), plain or gzip
(told apart by the gzip magic bytes), from one file, a folder of parts (``generate
--format criteo`` writes one), or the Terabyte layout ``day_0`` ... ``day_23``. Memory is
bounded by the shuffle buffer and one batch, whatever the files' length.

- Shuffling: a buffer of ``shuffle_buffer`` rows; each new row replaces a random row of the
  buffer, which is emitted (the usual bounded streaming shuffle), seeded by (seed, epoch).
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
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from contract.hashing import stable_hash64
from contract.spec import ModelInput
from dlrm.data import Batch

NUM_DENSE, NUM_SPARSE = 13, 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
EVAL_DAY = 23  # MLPerf DLRM on Criteo Terabyte: day 23 is held out for evaluation
_DAY = re.compile(r"^day_(\d+)(\..*)?$")
_SPLITS = ("train", "valid", "all")


def criteo_files(path: Path | str) -> list[Path]:
    """The Criteo files under ``path``: the file itself, or a folder's regular files
    (``day_<n>`` files in day order when the folder has them, else by name)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"Criteo input {path} does not exist")
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
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


class CriteoStream(IterableDataset):
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
        super().__init__()
        sizes = [table_sizes] * NUM_SPARSE if isinstance(table_sizes, int) else list(table_sizes)
        if len(sizes) != NUM_SPARSE or min(sizes) < 1:
            raise ValueError(f"table_sizes={table_sizes!r}: expected an int >= 1 or {NUM_SPARSE} of them")
        if batch_size < 1 or shuffle_buffer < 0:
            raise ValueError(f"batch_size={batch_size}, shuffle_buffer={shuffle_buffer}: expected >= 1 and >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}: expected 0 <= rank < world_size={world_size}")
        if split not in _SPLITS:
            raise ValueError(f"split={split!r}: expected one of {_SPLITS}")
        if not 0 <= valid_fraction < 1:
            raise ValueError(f"valid_fraction={valid_fraction}: expected 0 <= x < 1")
        self.files = criteo_files(path)
        self.table_sizes = np.asarray(sizes, dtype=np.uint64)
        self.batch_size, self.shuffle_buffer = int(batch_size), int(shuffle_buffer)
        self.seed, self.epoch, self.rank, self.world_size = int(seed), int(epoch), int(rank), int(world_size)
        self.split, self.valid_fraction, self.max_malformed = split, float(valid_fraction), int(max_malformed)
        self.terabyte = any(day_of(f) == EVAL_DAY for f in self.files)
        self.malformed = 0  # malformed lines seen by this process in the last epoch

    def set_epoch(self, epoch: int) -> None:
        """Shuffle as epoch ``epoch`` next time."""
        self.epoch = int(epoch)

    def _held_out(self, path: Path, row: int) -> bool:
        if self.terabyte:
            return day_of(path) == EVAL_DAY
        f = self.valid_fraction  # every (1/f)-th row: exactly f of any run of rows, evenly spread
        return int((row + 1) * f) > int(row * f)

    def rows(self) -> Iterator[tuple[float, list[float], list[str]]]:
        """This shard's parsed rows of the split, in file order (no shuffling)."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        shards, shard = self.world_size * workers, self.rank * workers + worker
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
        if self.shuffle_buffer <= 1:
            yield from self.rows()
            return
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, info.id if info is not None else 0])
        buf: list = []
        for item in self.rows():
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], item = item, buf[j]
            yield item
        for j in rng.permutation(len(buf)):
            yield buf[j]

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
