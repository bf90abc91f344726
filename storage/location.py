"""Where a render's files live: a local path, or any filesystem fsspec reaches (``s3://``, ``gs://``,
``file://``, ...), behind one small, picklable, path-like object.

A ``Location`` is a URL (or a local path) and the fsspec storage options that reach it. The driver
uses it for everything around a render's Zarr store (the mp4s, segments, previews, reports, the
lock), and tasks receive it, so a worker opens exactly what the driver opened. Local paths use
plain ``pathlib`` and ``os`` calls, atomic renames included.

Remote filesystems are treated as object stores: no directories to create (a key's parents exist
by themselves), a whole-object write (``write_bytes``, ``local_target``) appears at once or not at
all, and files that a library writes or reads only locally (PyAV's mp4s) go through a local
temporary copy (``local_target``, ``local_copy``). Credentials come from fsspec's usual
configuration (for S3: ``AWS_*`` environment variables, ``~/.aws``, an instance role, fsspec's
``FSSPEC_S3_*`` settings) or from the storage options given here.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Location", "as_location"]


def _local_path(url: str) -> Path | None:
    """The local path of a plain path or ``file://`` URL, else ``None``."""
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    return None if "://" in url else Path(url)


class Location:
    """A file or folder on a local or fsspec filesystem (pathlib-like: ``/``, ``name``, ``parent``,
    ``exists``, ``read_bytes``, ...).

    Parameters
    ----------
    url
        A local path, a ``file://`` URL or any fsspec URL (``s3://bucket/renders``).
    storage_options
        Keyword arguments for the fsspec filesystem (``endpoint_url``, ``key``, ...); ignored for
        local paths. They travel with the object (to Dask workers too): leave secrets to the
        filesystem's own configuration where workers have it.
    """

    __slots__ = ("url", "storage_options", "_fs")

    def __init__(self, url: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        url = os.fspath(url)
        if not url:
            raise ValueError("a location needs a path or URL, got an empty string")
        local = _local_path(url)
        if local is not None:  # normalised as pathlib does ("a/b/" and "a/b" are one place)
            url = ("file://" if url.startswith("file://") else "") + str(local)
        self.url = url
        local = _local_path(url) is not None
        self.storage_options = None if local or not storage_options else dict(storage_options)
        self._fs = None

    # -- identity -------------------------------------------------------------------------------
    @property
    def local_path(self) -> Path | None:
        """The local path, or ``None`` on a remote filesystem."""
        return _local_path(self.url)

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    @property
    def protocol(self) -> str:
        return "file" if self.is_local else self.url.split("://", 1)[0]

    def native(self) -> Path | Location:
        """A ``pathlib.Path`` for a local location (what callers got before), else ``self``."""
        return self.local_path if self.is_local else self

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Location):
            return NotImplemented
        return (self.url, self.storage_options) == (other.url, other.storage_options)

    def __hash__(self) -> int:
        return hash(self.url)

    def __getstate__(self):
        return (self.url, self.storage_options)

    def __setstate__(self, state) -> None:
        self.url, self.storage_options = state
        self._fs = None

    # -- paths ----------------------------------------------------------------------------------
    def _with_url(self, url: str) -> Location:
        return Location(url, self.storage_options)

    def joinpath(self, *parts: str) -> Location:
        local = self.local_path
        if local is not None:
            prefix = "file://" if self.url.startswith("file://") else ""
            return self._with_url(prefix + str(local.joinpath(*parts)))
        return self._with_url("/".join([self.url.rstrip("/"), *(str(p).strip("/") for p in parts)]))

    def __truediv__(self, part: str) -> Location:
        return self.joinpath(part)

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    @property
    def parent(self) -> Location:
        local = self.local_path
        if local is not None:
            prefix = "file://" if self.url.startswith("file://") else ""
            return self._with_url(prefix + str(local.parent))
        head = self.url.rstrip("/").rsplit("/", 1)[0]
        return self._with_url(head if "://" in head and not head.endswith(":/") else self.url)

    def with_name(self, name: str) -> Location:
        return self.parent / name

    # -- the filesystem -------------------------------------------------------------------------
    @property
    def fs(self):
        """The fsspec filesystem (made on first use; fsspec caches instances per options)."""
        if self._fs is None:
            from fsspec.core import url_to_fs

            self._fs, _ = url_to_fs(self.url, **(self.storage_options or {}))
        return self._fs

    @property
    def path(self) -> str:
        """The path on the filesystem (``bucket/key`` for S3, an absolute path locally)."""
        local = self.local_path
        if local is not None:
            return str(local.absolute())
        return self.fs._strip_protocol(self.url)

    def _fresh(self) -> None:
        # listings cached by the filesystem may predate another process's writes
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.path)

    # -- queries --------------------------------------------------------------------------------
    def exists(self) -> bool:
        local = self.local_path
        if local is not None:
            return local.exists()
        self._fresh()
        return self.fs.exists(self.path)

    def is_dir(self) -> bool:
        local = self.local_path
        if local is not None:
            return local.is_dir()
        self._fresh()
        return self.fs.isdir(self.path)

    def is_file(self) -> bool:
        local = self.local_path
        if local is not None:
            return local.is_file()
        self._fresh()
        return self.fs.isfile(self.path)

    def nearest_existing(self) -> Location | None:
        """This location or its nearest ancestor that exists (``None``: not even the top, e.g. a
        missing bucket)."""
        here = self
        while True:
            if here.exists():
                return here
            up = here.parent
            if up.url == here.url:
                return None
            here = up

    # -- reading and writing --------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        local = self.local_path
        if local is not None:
            return local.read_bytes()
        return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file: locally through a temporary name and a rename, remotely as one object
        (either way it appears complete or not at all)."""
        local = self.local_path
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:12]}.partial")
            try:
                tmp.write_bytes(data)
                tmp.replace(local)
            finally:
                tmp.unlink(missing_ok=True)
            return
        self.fs.pipe_file(self.path, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def create_exclusive(self, data: bytes) -> None:
        """Write a file that must not exist yet (``FileExistsError`` if it does). Remotely this is
        a conditional write (S3's ``If-None-Match``); ``NotImplementedError`` where the filesystem
        cannot make one."""
        local = self.local_path
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            with open(local, "xb") as f:
                f.write(data)
            return
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except TypeError as exc:  # a filesystem whose pipe_file has no modes
            raise NotImplementedError(f"{self.protocol}: no exclusive create") from exc

    def mkdir(self) -> None:
        """Create the folder and its parents locally (object stores need none)."""
        local = self.local_path
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)

    def unlink(self, missing_ok: bool = False) -> None:
        local = self.local_path
        if local is not None:
            local.unlink(missing_ok=missing_ok)
            return
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        self._fresh()

    def rmtree(self) -> None:
        """Delete a folder and everything in it."""
        local = self.local_path
        if local is not None:
            shutil.rmtree(local)
            return
        self.fs.rm(self.path, recursive=True)
        self._fresh()

    @contextlib.contextmanager
    def local_copy(self) -> Iterator[Path]:
        """A local file with this file's bytes, for libraries that only read local files: the file
        itself when local, else a temporary download deleted afterwards."""
        local = self.local_path
        if local is not None:
            yield local
            return
        with tempfile.TemporaryDirectory(prefix="supergen-") as tmp:
            target = Path(tmp) / (self.name or "file")
            self.fs.get_file(self.path, str(target))
            yield target

    @contextlib.contextmanager
    def local_target(self) -> Iterator[Path]:
        """A local path to write this file at, for libraries that only write local files: the
        path itself when local (the writer keeps its own atomic rename), else a temporary file
        uploaded when the block ends without an error (nothing is uploaded otherwise)."""
        local = self.local_path
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            yield local
            return
        with tempfile.TemporaryDirectory(prefix="supergen-") as tmp:
            target = Path(tmp) / (self.name or "file")
            yield target
            self.fs.put_file(str(target), self.path)
        self._fresh()


def as_location(
    where: str | os.PathLike | Location, storage_options: dict[str, Any] | None = None
) -> Location:
    """``where`` as a ``Location`` (a ``Location`` is returned as it is; ``storage_options`` only
    apply to a path or URL given as text)."""
    if isinstance(where, Location):
        return where
    return Location(where, storage_options)
