"""Atomic outputs: a killed run's scratch is removed by the next run, a live run's is not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from contract.io import atomic_dir, atomic_file, remove_stale, scratch_name, write_json


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _scratch(parent, name: str, kind: str, pid: int | None) -> os.PathLike:
    d = parent / (f".{name}.{kind}-{pid}-0123abcd" if pid is not None else f".{name}.{kind}-dead0001")
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "part.parquet").write_text("half written")
    return d


def test_scratch_of_dead_writers_is_removed_and_of_live_ones_kept(tmp_path):
    out = tmp_path / "validated"
    out.mkdir()
    dead = [_scratch(tmp_path, "validated", "tmp", _dead_pid()), _scratch(tmp_path, "validated", "old", None),
            _scratch(tmp_path, "validated", "work", _dead_pid())]
    live = [_scratch(tmp_path, "validated", "tmp", os.getppid()), _scratch(tmp_path, "validated", "tmp", os.getpid())]
    other = _scratch(tmp_path, "validated2", "tmp", _dead_pid())   # another output's scratch
    removed = remove_stale(out)
    assert sorted(removed) == sorted(dead)
    assert all(d.exists() for d in live) and other.exists() and out.is_dir()


def test_every_atomic_output_removes_a_killed_runs_scratch(tmp_path):
    leftovers = [_scratch(tmp_path, "data", "tmp", _dead_pid()), _scratch(tmp_path, "metrics.json", "tmp", None)]
    with atomic_dir(tmp_path / "data") as tmp:
        assert tmp.name.startswith(f".data.tmp-{os.getpid()}-")
        (tmp / "x").write_text("1")
    write_json(tmp_path / "metrics.json", {"auc": 0.8})
    assert not any(d.exists() for d in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "metrics.json"]


def test_a_failed_block_leaves_the_old_output_and_no_scratch(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "card.md") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (out / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert scratch_name(out, "tmp").name.startswith(f".model.tmp-{os.getpid()}-")
