"""Small helpers every step uses: errors, atomic outputs, JSON reports, logging."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class StepError(RuntimeError):
    """A step refused or failed for a reason the user should read (one line)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def log(step: str, message: str) -> None:
    """One progress line on stderr, prefixed with the step name."""
    print(f"[{step}] {message}", file=sys.stderr, flush=True)


SCRATCH_KINDS = ("tmp", "old", "work")   # .NAME.<kind>-<pid>-<hex>: a step's scratch beside NAME


def scratch_name(path: Path | str, kind: str) -> Path:
    """A scratch path beside ``path``, ``.NAME.<kind>-<pid>-<hex>``: the pid tells a later
    run whether the writer is still alive (see :func:`remove_stale`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


def remove_stale(path: Path | str) -> list[Path]:
    """Removes what killed runs left beside ``path``: scratch entries ``.NAME.tmp-*``,
    ``.NAME.old-*``, ``.NAME.work-*`` whose writer (the pid in the name) is no longer
    running on this machine, and those named without a pid. Never ``path`` itself, nor
    the scratch of a run still in progress. Returns what it removed."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for kind in SCRATCH_KINDS:
        for p in path.parent.glob(f".{path.name}.{kind}-*"):
            pid, _, rest = p.name[len(path.name) + len(kind) + 3:].partition("-")
            if rest and pid.isdigit() and _alive(int(pid)):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yields a fresh temporary directory that replaces ``path`` only if the block succeeds.

    Readers never see a half-written output: on error the old ``path`` (if any) is
    untouched and the temporary directory is removed. What a killed run left beside
    ``path`` is removed first (:func:`remove_stale`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = scratch_name(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = scratch_name(path, "old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


@contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; what the block writes there replaces
    ``path`` by a rename when the block succeeds, and is removed when it fails, so a
    reader sees the old file or the whole new one, never a part.

    Example:
        >>> with atomic_file("reports/drift.html") as tmp:       # doctest: +SKIP
        ...     snapshot.save_html(str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = scratch_name(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path | str, data: Any) -> Path:
    """Writes ``data`` as indented JSON atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def plain(x: Any) -> Any:
    """Nested dicts/lists/tuples as JSON-ready dicts and lists (tuples become lists)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")
