"""The model registry: versioned bundles and an atomically moved ``production`` pointer.

A registry is a directory, or any fsspec URL (``s3://bucket/registry``, ``gs://...``;
``memory://`` stands in for an object store in tests)::

    REGISTRY/v1/{model.safetensors, config.json, MODEL_CARD.md}
    REGISTRY/v2/{model.safetensors, config.json, MODEL_CARD.md,
                 retrieval/{model.safetensors, items.json, config.json}}
    REGISTRY/production        JSON: {"version": "v2", "history": ["v1"], "updated_at": ...}

A bundle is a folder; its files may sit in subfolders (a version's ``retrieval/`` holds the
retrieval model pushed with the ranker), named by their path relative to the version
(``retrieval/config.json``). A bundle is written whole under a temporary name, renamed to
``vN`` once complete, and only then does the pointer move (written to a temporary file,
then renamed over ``production``). A crash at any point leaves ``production`` naming a
complete bundle; at worst a temporary directory or an unreferenced ``vN`` is left behind.

Example:
    >>> reg = Registry("registry")                    # doctest: +SKIP
    >>> version = reg.publish(Path("staging/bundle"))  # doctest: +SKIP
    >>> reg.set_production(version)                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

POINTER = "production"
VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")
TMP_PREFIX = ".tmp-"


class Registry:
    """Versioned model bundles under one fsspec location.

    Args:
        url: a directory path or an fsspec URL (``memory://reg``, ``s3://bucket/reg``).
    """

    def __init__(self, url: str | Path):
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/") or "/"

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # ---- reading -------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Complete bundle versions, oldest first (``["v1", "v2", ...]``)."""
        if not self.fs.exists(self.root):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        found = [(int(m.group(1)), n) for n in names if (m := VERSION_RE.match(n))]
        return [n for _, n in sorted(found)]

    def pointer(self, fresh: bool = False) -> dict[str, Any] | None:
        """The production pointer's record, or None when nothing was ever promoted.

        Args:
            fresh: drop the filesystem's listing cache first (object stores cache
                listings; a server that polls the pointer must see it move).
        """
        path = self._path(POINTER)
        if fresh:
            self.fs.invalidate_cache(self.root)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as fh:
            doc = json.loads(fh.read().decode("utf-8"))
        if not isinstance(doc, dict) or not VERSION_RE.match(str(doc.get("version", ""))):
            raise ValueError(f"registry pointer {self.url}/{POINTER} is malformed: {doc!r}; "
                             "expected {\"version\": \"vN\", ...}")
        return doc

    def production(self) -> str | None:
        """The version ``production`` names, or None."""
        doc = self.pointer()
        return None if doc is None else str(doc["version"])

    def files(self, version: str) -> list[str]:
        """The files of a bundle version, as paths relative to it (``config.json``,
        ``retrieval/items.json``), sorted."""
        self._check_version(version)
        base = self.fs._strip_protocol(self._path(version)).rstrip("/") + "/"
        found = [self.fs._strip_protocol(p) for p in self.fs.find(self._path(version))]
        return sorted(p[len(base):] for p in found if p.startswith(base))

    def has(self, version: str, name: str) -> bool:
        """True when the bundle holds the file ``name`` (a path relative to the version)."""
        return name in self.files(version)

    def read_text(self, version: str, name: str) -> str:
        """One text file of a bundle (e.g. ``config.json``, ``retrieval/config.json``)."""
        self._check_version(version)
        with self.fs.open(self._path(version, name), "rb") as fh:
            return fh.read().decode("utf-8")

    def fetch(self, version: str | None, dest: Path, under: str | None = None) -> tuple[str, Path]:
        """Copies a bundle (default: the production one) into the local dir ``dest``.

        Args:
            under: copy only the files in this subfolder of the bundle (e.g. ``"retrieval"``),
                to the top of ``dest``.

        Returns:
            (the version fetched, ``dest``).
        """
        if version is None:
            version = self.production()
            if version is None:
                raise FileNotFoundError(f"registry {self.url} has no production model (no "
                                        f"{POINTER!r} pointer); run `robeflow push` first")
        self._check_version(version)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        prefix = "" if under is None else under.strip("/") + "/"
        names = [n for n in self.files(version) if n.startswith(prefix)]
        if under is not None and not names:
            raise FileNotFoundError(f"registry {self.url} bundle {version} has no {under!r} folder")
        for name in names:
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self._path(version, name), str(target))
        return version, dest

    def local_dir(self, version: str) -> Path | None:
        """The bundle's own directory when the registry is on the local disk, else None."""
        if isinstance(self.fs, LocalFileSystem):
            return Path(self._path(version))
        return None

    def _check_version(self, version: str) -> None:
        if not VERSION_RE.match(str(version)):
            raise ValueError(f"bundle version {version!r} is not of the form v1, v2, ...")
        if not self.fs.isdir(self._path(version)):
            raise FileNotFoundError(f"registry {self.url} has no bundle {version} "
                                    f"(it has {self.versions() or 'none'})")

    # ---- writing -------------------------------------------------------------------

    def publish(self, bundle_dir: Path) -> str:
        """Uploads the files of the local dir ``bundle_dir``, subfolders included, as the
        next version.

        The files go to a temporary directory first, which is renamed to ``vN`` once all
        are written; the production pointer does not move (see :meth:`set_production`).

        Returns:
            the new version, e.g. ``"v3"``.
        """
        bundle_dir = Path(bundle_dir)
        files = sorted(p.relative_to(bundle_dir) for p in bundle_dir.rglob("*") if p.is_file())
        if not any(len(f.parts) == 1 for f in files):
            raise ValueError(f"bundle dir {bundle_dir} holds no files at its top")
        self.fs.makedirs(self.root, exist_ok=True)
        tmp = self._path(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
        self.fs.makedirs(tmp, exist_ok=True)
        try:
            for f in files:
                if len(f.parts) > 1:
                    self.fs.makedirs(f"{tmp}/{f.parent.as_posix()}", exist_ok=True)
                self.fs.put_file(str(bundle_dir / f), f"{tmp}/{f.as_posix()}")
            for attempt in range(5):
                version = self.next_version()
                try:
                    self._rename(tmp, self._path(version))
                    break
                except (FileExistsError, OSError) as e:
                    # another push took this number between listing and renaming
                    if attempt == 4 or not self.fs.exists(self._path(version)):
                        raise
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)
            raise
        return version

    def set_production(self, version: str, *, _history: list[str] | None = None) -> None:
        """Points ``production`` at ``version`` atomically (write a temp file, rename it).

        The version it replaces is pushed onto the pointer's history, for :meth:`rollback`.
        """
        self._check_version(version)
        old = self.pointer()
        if _history is None:
            history = [] if old is None else [str(old["version"]), *old.get("history", [])]
        else:
            history = _history
        doc = {"version": version, "history": history,
               "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = self._path(f"{TMP_PREFIX}{POINTER}-{uuid.uuid4().hex[:12]}")
        with self.fs.open(tmp, "wb") as fh:
            fh.write((json.dumps(doc, indent=2) + "\n").encode("utf-8"))
        try:
            self._rename(tmp, self._path(POINTER), replace=True)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    def rollback(self) -> tuple[str, str]:
        """Moves ``production`` back to the version it named before.

        Returns:
            (the version it named, the version it names now).
        """
        doc = self.pointer()
        if doc is None:
            raise ValueError(f"registry {self.url} has no production pointer to roll back")
        history = [v for v in doc.get("history", []) if v in set(self.versions())]
        if not history:
            raise ValueError(f"registry {self.url}: production ({doc['version']}) has no earlier "
                             "version to roll back to")
        self.set_production(history[0], _history=history[1:])
        return str(doc["version"]), history[0]

    def next_version(self) -> str:
        """The version the next :meth:`publish` will create (``v1`` in an empty registry)."""
        versions = self.versions()
        last = int(VERSION_RE.match(versions[-1]).group(1)) if versions else 0
        return f"v{last + 1}"

    def _rename(self, src: str, dst: str, replace: bool = False) -> None:
        """Renames ``src`` to ``dst``: one atomic ``rename(2)`` on a local disk (which also
        refuses to overwrite a non-empty directory), the store's move elsewhere (object
        stores: a server-side copy, so readers see the old or the new object, never a
        partial one)."""
        if isinstance(self.fs, LocalFileSystem):
            if replace:
                os.replace(src, dst)
            else:
                os.rename(src, dst)
            return
        if not replace and self.fs.exists(dst):
            raise FileExistsError(f"{dst} already exists in registry {self.url}")
        self.fs.mv(src, dst, recursive=True)
