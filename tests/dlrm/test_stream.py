import gzip
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from contract.hashing import hash64
from dlrm.stream import CriteoStream, criteo_files


def line(i: int, label: int | None = None) -> str:
    """A Criteo TSV line whose I1 is the row number i (so tests can tell rows apart)."""
    dense = [str(i), "", *[str((i * k) % 7) for k in range(10)], "-1"]
    cats = [f"{(i * 2654435761 + t) % 50:08x}" if (i + t) % 9 else "" for t in range(26)]
    return "\t".join([str(label if label is not None else i % 2), *dense, *cats]) + "\n"


def rows_of(batches) -> list[int]:
    """Row numbers (I1 = log1p(i)) of every row of ``batches``."""
    out = []
    for b in batches:
        out += torch.expm1(b.dense[:, 0].double()).round().long().tolist()
    return out


@pytest.fixture
def tsv(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("".join(line(i) for i in range(500)))
    return path


def test_batches_hash_like_the_in_memory_transform(tsv):
    stream = CriteoStream(tsv, list(range(100, 126)), batch_size=64, split="all")
    batches = list(stream)
    assert [b.labels.numel() for b in batches] == [64] * 7 + [52]
    b = batches[1]
    i = 64 + 5
    fields = line(i).rstrip("\n").split("\t")
    want = [hash64(fields[14 + t]) % (100 + t) for t in range(26)]
    assert b.values.view(-1, 26)[5].tolist() == want
    assert torch.equal(b.offsets, torch.arange(64 * 26 + 1))
    assert b.labels[5] == i % 2 and b.dense[5, 12] == 0.0  # log1p(max(-1, 0))
    torch.testing.assert_close(b.dense[5, 2], torch.tensor(np.log1p((i * 0) % 7), dtype=torch.float32))


def test_every_row_once_per_epoch_across_ranks_and_workers(tsv):
    for kw in (dict(world_size=2, rank=0), dict(world_size=2, rank=1)):
        assert len(rows_of(CriteoStream(tsv, 1000, batch_size=32, split="all", **kw))) == 250
    seen = []
    for rank in (0, 1):
        s = CriteoStream(tsv, 1000, batch_size=32, split="all", rank=rank, world_size=2, shuffle_buffer=50)
        seen += rows_of(DataLoader(s, batch_size=None, num_workers=2))
    assert sorted(seen) == list(range(500))  # 2 ranks x 2 workers: each row exactly once


def test_shuffle_buffer_reorders_within_a_bounded_window(tsv):
    plain = rows_of(CriteoStream(tsv, 1000, batch_size=100, split="all"))
    s = CriteoStream(tsv, 1000, batch_size=100, split="all", shuffle_buffer=64, seed=3)
    e0 = rows_of(s)
    s.set_epoch(1)
    e1 = rows_of(s)
    assert plain == list(range(500)) and sorted(e0) == sorted(e1) == plain
    assert e0 != plain and e1 != e0
    # a row leaves the buffer no earlier than (its position - buffer size)
    assert all(pos >= row - 64 for pos, row in enumerate(e0))
    assert rows_of(CriteoStream(tsv, 1000, batch_size=100, split="all", shuffle_buffer=64, seed=3)) == e0


def test_folders_of_parts_gzip_and_the_terabyte_layout(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "part-0.tsv").write_text("".join(line(i) for i in range(0, 30)))
    with gzip.open(parts / "part-1.tsv.gz", "wt") as fh:
        fh.write("".join(line(i) for i in range(30, 60)))
    assert rows_of(CriteoStream(parts, 100, batch_size=16, split="all")) == list(range(60))
    # what writers put beside their parts is not data
    (parts / "_SUCCESS").write_text("")
    (parts / "_generate.json").write_text("{}")
    assert [f.name for f in criteo_files(parts)] == ["part-0.tsv", "part-1.tsv.gz"]
    days = tmp_path / "tb"
    days.mkdir()
    for d in (0, 1, 2, 10, 23):
        (days / f"day_{d}").write_text("".join(line(100 * d + i) for i in range(5)))
    assert [f.name for f in criteo_files(days)] == ["day_0", "day_1", "day_2", "day_10", "day_23"]
    train = rows_of(CriteoStream(days, 100, batch_size=8))
    valid = rows_of(CriteoStream(days, 100, batch_size=8, split="valid"))
    assert valid == [2300 + i for i in range(5)]  # day 23 evaluates (MLPerf)
    assert train == [100 * d + i for d in (0, 1, 2, 10) for i in range(5)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        CriteoStream(tmp_path / "empty", 10, batch_size=1)


def test_valid_fraction_holds_out_the_same_rows_every_time(tsv):
    train = rows_of(CriteoStream(tsv, 100, batch_size=50, valid_fraction=0.2))
    valid = rows_of(CriteoStream(tsv, 100, batch_size=50, split="valid", valid_fraction=0.2))
    assert sorted(train + valid) == list(range(500)) and not set(train) & set(valid)
    assert valid == list(range(4, 500, 5))  # every fifth row


def test_malformed_lines_are_skipped_with_their_line_number_then_refused(tmp_path):
    path = tmp_path / "bad.tsv"
    lines = [line(i) for i in range(20)]
    lines[3] = "1\tonly\tthree\n"
    lines[7] = line(7).replace("\t", "\tx", 1)  # a non-integer count
    lines[11] = "2" + line(11)[1:]               # a label outside {0, 1}
    path.write_text("".join(lines))
    stream = CriteoStream(path, 100, batch_size=8, split="all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = rows_of(stream)
    assert got == [i for i in range(20) if i not in (3, 7, 11)] and stream.malformed == 3
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:4:" in m for m in messages) and any(":8:" in m for m in messages)
    with pytest.raises(ValueError, match="more than 2 malformed lines"), pytest.warns(UserWarning):
        list(CriteoStream(path, 100, batch_size=8, split="all", max_malformed=2))


def test_bad_arguments_are_named(tsv):
    with pytest.raises(ValueError, match="table_sizes"):
        CriteoStream(tsv, [5] * 3, batch_size=8)
    with pytest.raises(ValueError, match="split"):
        CriteoStream(tsv, 5, batch_size=8, split="test")
    with pytest.raises(ValueError, match="rank"):
        CriteoStream(tsv, 5, batch_size=8, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError):
        CriteoStream(tsv.parent / "missing.tsv", 5, batch_size=8)


def planted_line(i: int, rng: np.random.Generator) -> str:
    """C1 carries the signal: values 0..5 of 20 click with probability 0.9, the rest 0.1."""
    c1 = int(rng.integers(20))
    label = int(rng.random() < (0.9 if c1 < 6 else 0.1))
    dense = [str(int(rng.integers(0, 50))) for _ in range(13)]
    cats = [f"{c1:08x}"] + [f"{int(rng.integers(0, 30)):08x}" for _ in range(25)]
    return "\t".join([str(label), *dense, *cats]) + "\n"


@pytest.fixture
def planted(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "parts"
    folder.mkdir()
    for k in range(3):
        (folder / f"part-{k}.tsv").write_text("".join(planted_line(i, rng) for i in range(700)))
    return folder


def stream_cfg(**kw):
    from dlrm.configs import EmbeddingConfig, ModelConfig, OptimConfig, TrainConfig

    model = ModelConfig(embedding=EmbeddingConfig(backend="robe", dim=8, compression=8, block=4),
                        bottom_mlp=(16,), top_mlp=(16,))
    base = dict(model=model, batch_size=128, epochs=2, eval_every=6, progress=False,
                optim=OptimConfig(dense_lr=3e-3, embedding_lr=0.1))
    return TrainConfig(**{**base, **kw})


def test_training_on_a_stream_learns_and_resumes_bitwise(tmp_path, planted):
    from features.criteo import criteo_spec

    from dlrm.train import latest_checkpoint, train_model

    sizes = [64] * 26
    spec = criteo_spec(sizes)
    valid = CriteoStream(planted, sizes, batch_size=512, split="valid").model_input()
    assert valid.num_rows == 210  # every tenth of the 2100 rows

    def stream():
        return CriteoStream(planted, sizes, batch_size=128, shuffle_buffer=300, seed=1)

    full = train_model(stream_cfg(checkpoint_every=5), spec, stream(), valid, checkpoint_dir=tmp_path / "a")
    steps_per_epoch = -(-1890 // 128)
    assert full.steps == 2 * steps_per_epoch and full.samples == 2 * 1890 and full.epochs_completed == 2
    assert full.full_auc > 0.8  # chance 0.5; the planted feature alone gives ~0.9
    m = full.metrics()
    c1_ids = {hash64(f"{v:08x}") % 64 for v in range(20)}  # every C1 value occurs in 1890 rows
    assert m["rows_used_per_feature"][0] == len(c1_ids) and m["rows_used"] <= 26 * 30

    part = train_model(stream_cfg(checkpoint_every=5), spec, stream(), valid, checkpoint_dir=tmp_path / "b",
                       stop_at_step=steps_per_epoch + 3)
    assert part.interrupted and latest_checkpoint(tmp_path / "b").name == f"step-{steps_per_epoch:09d}.pt"
    resumed = train_model(stream_cfg(checkpoint_every=5), spec, stream(), valid, checkpoint_dir=tmp_path / "b",
                          resume=True)
    assert resumed.steps == full.steps
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise, mid-epoch of a shuffled stream
    assert [h["auc"] for h in resumed.history] == [h["auc"] for h in full.history]


# ---------------------------------------------------------------------------------------
# ModelInputStream: the model-ready Parquet tables as a stream
# ---------------------------------------------------------------------------------------

def numbered_dir(root, n: int = 1000, parts: int = 0, row_group: int = 128):
    """A model-ready dir of planted rows whose ``price`` is the row number (so tests can tell
    rows apart); ``train.parquet`` is one file, or a folder of ``parts`` parts. Returns
    (dir, the training rows in memory, as the in-memory path builds them)."""
    import pandas as pd

    from contract.model_input import write_model_input
    from contract.spec import ModelInput
    from dlrm.synthetic import PLANTED_SPEC, planted_frame

    frame = planted_frame(n, seed=7).drop(columns="_prob").assign(price=np.arange(n, dtype=np.float32))
    frame["hist_item"] = [np.arange(i % 5, dtype=np.int64) for i in range(n)]  # a column the model does not read
    write_model_input(root, {"valid": frame.iloc[:50]}, PLANTED_SPEC)
    if parts:
        (root / "train.parquet").mkdir()
        for k, part in enumerate(np.array_split(np.arange(n), parts)):
            frame.iloc[part].to_parquet(root / "train.parquet" / f"part-{k}.parquet", row_group_size=row_group)
    else:
        frame.to_parquet(root / "train.parquet", row_group_size=row_group)
    return root, ModelInput.from_frame(pd.read_parquet(root / "train.parquet"), PLANTED_SPEC)


def row_keys(batches, num_tables: int = 3) -> list[tuple]:
    """Each row as (row number, label, position, the ids of each bag)."""
    out = []
    for b in batches:
        for r in range(b.labels.numel()):
            bags = tuple(tuple(b.values[b.offsets[r * num_tables + t]:b.offsets[r * num_tables + t + 1]].tolist())
                         for t in range(num_tables))
            out.append((int(b.dense[r, 0]), float(b.labels[r]), float(b.dense[r, 1]), bags))
    return out


@pytest.mark.parametrize("parts", [0, 3])
def test_model_input_stream_yields_every_row_once_per_epoch_on_one_and_two_ranks(tmp_path, parts):
    from dlrm.data import TensorData
    from dlrm.stream import ModelInputStream
    from dlrm.synthetic import PLANTED_SPEC

    root, whole = numbered_dir(tmp_path, parts=parts)
    want = sorted(row_keys([TensorData(whole, 3).range_batch(0, whole.num_rows)]))
    kw = dict(batch_size=96, shuffle_buffer=300, seed=5, read_rows=100)
    one = ModelInputStream(root, PLANTED_SPEC, **kw)
    assert one.num_rows == 1000
    e0 = row_keys(one)
    assert sorted(e0) == want                       # the same rows as in memory, as a multiset
    assert [r[0] for r in e0] != list(range(1000))  # shuffled
    one.set_epoch(1)
    e1 = row_keys(one)
    assert sorted(e1) == want and e1 != e0
    assert row_keys(ModelInputStream(root, PLANTED_SPEC, **kw, epoch=1)) == e1  # epoch-seeded
    ranks = [row_keys(ModelInputStream(root, PLANTED_SPEC, **kw, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 500
    assert not {r[0] for r in ranks[0]} & {r[0] for r in ranks[1]}
    assert sorted(ranks[0] + ranks[1]) == want      # 2 ranks: each row exactly once
    seen = []
    for rank in (0, 1):  # 2 ranks x 2 DataLoader workers
        s = ModelInputStream(root, PLANTED_SPEC, **kw, rank=rank, world_size=2)
        seen += [r[0] for r in row_keys(DataLoader(s, batch_size=None, num_workers=2))]
    assert sorted(seen) == list(range(1000))


def test_model_input_stream_in_file_order_and_its_batches(tmp_path):
    from dlrm.stream import ModelInputStream
    from dlrm.synthetic import PLANTED_SPEC

    root, _ = numbered_dir(tmp_path, n=500, parts=2, row_group=64)
    batches = list(ModelInputStream(root, PLANTED_SPEC, batch_size=96, read_rows=70))
    assert [b.labels.numel() for b in batches] == [96] * 5 + [20]
    assert [r[0] for r in row_keys(batches)] == list(range(500))
    with pytest.raises(ValueError, match="rank=2"):
        ModelInputStream(root, PLANTED_SPEC, batch_size=8, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError, match="test.parquet"):
        ModelInputStream(root, PLANTED_SPEC, batch_size=8, split="test")


def test_training_through_the_model_input_stream_matches_in_memory(tmp_path):
    from contract.model_input import read_spec
    from contract.spec import ModelInput
    from dlrm.stream import ModelInputStream
    from dlrm.synthetic import write_planted_dir
    from dlrm.train import train_model

    write_planted_dir(tmp_path / "mi", tmp_path / "truth", {"train": 20000, "valid": 4000})
    spec = read_spec(tmp_path / "mi")
    import pandas as pd

    def whole(split):
        return ModelInput.from_frame(pd.read_parquet(tmp_path / "mi" / f"{split}.parquet"), spec)

    cfg = stream_cfg(epochs=2, eval_every=0)
    memory = train_model(cfg, spec, whole("train"), whole("valid"))
    stream = ModelInputStream(tmp_path / "mi", spec, batch_size=cfg.batch_size, shuffle_buffer=5000, seed=0)
    streamed = train_model(cfg, spec, stream, whole("valid"))
    assert streamed.samples == memory.samples == 2 * 20000
    assert memory.full_auc > 0.75                      # chance 0.5; ~0.80 here
    assert abs(streamed.full_auc - memory.full_auc) < 0.02, (streamed.full_auc, memory.full_auc)


# Runs a command and prints its output, then its peak RSS (KiB). The measuring process is
# small: a child forked from the pytest process would count the test's pages in ru_maxrss.
_MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
            "_, status, usage = os.wait4(p.pid, 0); print(usage.ru_maxrss); "
            "sys.exit(os.waitstatus_to_exitcode(status))")
_READ = """
import sys
from contract.model_input import read_frame, read_spec
from contract.spec import ModelInput
from dlrm.stream import ModelInputStream
root, mode = sys.argv[1], sys.argv[2]
spec = read_spec(root)
if mode == "stream":
    stream = ModelInputStream(root, spec, batch_size=4096, shuffle_buffer=50_000, read_rows=16_384)
    print(sum(b.labels.numel() for b in stream))
else:
    print(ModelInput.from_frame(read_frame(root, "train"), spec).num_rows)
"""


def wide_dir(root, rows: int, part_rows: int = 100_000) -> None:
    """A model-ready dir of ``rows`` random single-hot rows (8 dense, 20 sparse features:
    ~550 bytes a row in memory), written part by part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from contract.spec import DenseFeature, FeatureSpec, SparseFeature

    spec = FeatureSpec(dense=tuple(DenseFeature(f"d{j}") for j in range(8)),
                       sparse=tuple(SparseFeature(f"s{t}", 1000) for t in range(20)))
    (root / "train.parquet").mkdir(parents=True)
    spec.save(root / "feature_spec.json")
    rng = np.random.default_rng(rows)
    for k, start in enumerate(range(0, rows, part_rows)):
        n = min(part_rows, rows - start)
        cols = {f"d{j}": rng.random(n, dtype=np.float32) for j in range(8)}
        cols |= {f"s{t}": rng.integers(0, 1000, n) for t in range(20)}
        cols["purchased"] = rng.integers(0, 2, n)
        pq.write_table(pa.table(cols), root / "train.parquet" / f"part-{k:03d}.parquet", row_group_size=32_768)


def peak_rss(root, mode: str) -> tuple[int, float]:
    """(rows read, peak RSS in MiB) of reading ``root``'s training split in a child process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-c", _READ, str(root), mode],
                          env=env, capture_output=True, text=True, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows, kib = proc.stdout.split()[-2:]
    return int(rows), int(kib) / 1024


@pytest.mark.slow
def test_model_input_stream_peak_memory_does_not_follow_the_data(tmp_path):
    """Streaming 4x the rows raises the peak RSS by at most 1.3x; reading the larger split
    whole (the in-memory path) does not stay within that bound, so the check can fail."""
    wide_dir(tmp_path / "small", 250_000)
    wide_dir(tmp_path / "large", 1_000_000)
    rows_small, small = peak_rss(tmp_path / "small", "stream")
    rows_large, large = peak_rss(tmp_path / "large", "stream")
    rows_whole, whole = peak_rss(tmp_path / "large", "whole")
    assert (rows_small, rows_large, rows_whole) == (250_000, 1_000_000, 1_000_000)
    assert large <= 1.3 * small, (small, large)
    assert whole > 1.3 * small, (small, whole)
