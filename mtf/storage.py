"""One filesystem layer for everything a run reads and writes, local or gs://.

Everything goes through etils `epath` on its fsspec backend (gcsfs for gs://), the layer
Orbax already uses; Orbax's array data goes through tensorstore's gcs driver. Both honour
`STORAGE_EMULATOR_HOST`, so a GCS-protocol emulator on 127.0.0.1 exercises the very code a
pod runs. TensorFlow's own GCS client cannot be pointed at an emulator (its endpoint is
compiled in), so mtf never hands it a gs:// path: epath is told not to use it.

GCS objects cannot be appended to, so files a run appends to (metrics.jsonl, TensorBoard
event files) are written in a local staging folder and uploaded whole at each flush
(`Mirror`), the way TensorFlow's GCS writer buffers a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import IO

from mtf.errors import MissingFileError, UserError

# Before any epath call: gs:// through fsspec/gcsfs, never TensorFlow's gfile.
os.environ.setdefault("EPATH_USE_TF", "false")


def _configure_emulator() -> None:
    """Point tensorstore and gcsfs at `STORAGE_EMULATOR_HOST` when it is set."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    if not host.startswith(("http://", "https://")):
        host = "http://" + host
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # no auth on emulators
    # gcsfs asks Google's storage-control API whether a bucket is zonal; emulators have none.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


_configure_emulator()

from etils import epath  # noqa: E402  (after the environment above)


class StorageError(UserError, OSError):
    """A path that cannot be reached or written; the message names it and the fix."""


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def path(p: str | os.PathLike) -> epath.Path:
    return epath.Path(p)


def join(base: str | os.PathLike, *parts: str) -> str:
    """Joins as text (a trailing slash is kept: tensorstore reads it as a folder)."""
    base = os.fspath(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts]) if parts else base
    return os.path.join(base, *parts)


def _bucket_hint(p: str) -> str:
    if not is_remote(p):
        return "check the path and its permissions"
    scheme, _, rest = p.partition("://")
    bucket = rest.split("/", 1)[0]
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    where = f"the emulator at STORAGE_EMULATOR_HOST={emulator}" if emulator else "Google Cloud"
    return (f"check that bucket {scheme}://{bucket} exists on {where} and that this machine "
            "may use it (`gcloud auth application-default login`, or the TPU VM's service "
            "account with Storage Object Admin on the bucket)")


def _wrap(p: str, action: str, error: Exception) -> Exception:
    if isinstance(error, FileNotFoundError | StorageError | IsADirectoryError):
        return error
    return StorageError(f"cannot {action} {p}: {type(error).__name__}: {error}; "
                        f"{_bucket_hint(p)}")


def check_bucket(p: str, setting: str) -> None:
    """Fails early, naming `setting`, when the bucket of a gs:// path cannot be reached.

    (gcsfs would otherwise create a missing bucket when a folder is made in it.)"""
    if not is_remote(p):
        return
    scheme, _, rest = p.partition("://")
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    try:
        found = epath.Path(bucket).exists()
    except Exception as e:
        raise StorageError(f"{setting}={p}: cannot reach {bucket} ({type(e).__name__}: "
                           f"{e}); {_bucket_hint(p)}") from e
    if not found:
        raise StorageError(f"{setting}={p}: bucket {bucket} does not exist; create it "
                           f"(`gcloud storage buckets create {bucket}`) or fix the name")


def exists(p: str | os.PathLike) -> bool:
    try:
        return epath.Path(p).exists()
    except Exception as e:  # gcsfs and aiohttp raise many types; each becomes one message
        raise _wrap(os.fspath(p), "look up", e) from e


def isdir(p: str | os.PathLike) -> bool:
    try:
        return epath.Path(p).is_dir()
    except Exception as e:
        raise _wrap(os.fspath(p), "look up", e) from e


def listdir(p: str | os.PathLike) -> list[str]:
    """Names (not paths) of the entries of folder `p`, sorted."""
    try:
        return sorted(q.name for q in epath.Path(p).iterdir())
    except Exception as e:
        raise _wrap(os.fspath(p), "list", e) from e


def open_read(p: str | os.PathLike) -> IO[bytes]:
    """A binary file object; FileNotFoundError names the path."""
    try:
        return epath.Path(p).open("rb")
    except FileNotFoundError:
        raise MissingFileError(f"{os.fspath(p)} does not exist") from None
    except Exception as e:
        raise _wrap(os.fspath(p), "read", e) from e


def read_bytes(p: str | os.PathLike) -> bytes:
    with open_read(p) as f:
        return f.read()


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    """Writes the whole object (a local file is replaced atomically)."""
    p = os.fspath(p)
    try:
        if is_remote(p):
            epath.Path(p).write_bytes(data)
            return
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(p)), prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except Exception as e:
        raise _wrap(p, "write", e) from e


def write_text(p: str | os.PathLike, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def upload(local: str, remote: str | os.PathLike) -> None:
    with open(local, "rb") as f:
        write_bytes(remote, f.read())


def cache_dir() -> str:
    """Where remote files read as local files are kept ($MTF_CACHE, else ~/.cache/mtf)."""
    return os.environ.get("MTF_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mtf"))


def local_copy(p: str) -> str:
    """`p` itself when local; a remote file is downloaded once into the cache (for libraries
    such as sentencepiece that only read local files) and that copy's path returned."""
    if not is_remote(p):
        return p
    key = hashlib.sha256(p.encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), "remote", key, os.path.basename(p))
    if not os.path.exists(target):
        data = read_bytes(p)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        write_bytes(target, data)
    return target


class Mirror:
    """A local folder standing for `remote` (a folder): files are written locally and
    `sync()` uploads those that changed. For a local `remote` the folder is `remote` itself
    and `sync()` does nothing. `resume` names files whose remote copy is downloaded first,
    so appends continue them (metrics.jsonl after a restart)."""

    def __init__(self, remote: str, resume: Iterable[str] = ()):
        self.remote = remote
        if not is_remote(remote):
            self.local = remote
            os.makedirs(remote, exist_ok=True)
            return
        self.local = tempfile.mkdtemp(prefix="mtf-mirror-")
        self._uploaded: dict[str, tuple[int, int]] = {}
        for name in resume:
            source = join(remote, name)
            if exists(source):
                target = os.path.join(self.local, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(read_bytes(source))
                self._uploaded[name] = self._signature(target)

    @staticmethod
    def _signature(local: str) -> tuple[int, int]:
        stat = os.stat(local)
        return stat.st_size, stat.st_mtime_ns

    def sync(self) -> None:
        if self.local == self.remote:
            return
        for folder, _, files in os.walk(self.local):
            for name in files:
                local = os.path.join(folder, name)
                relative = os.path.relpath(local, self.local)
                signature = self._signature(local)
                if self._uploaded.get(relative) != signature:
                    upload(local, join(self.remote, *relative.split(os.sep)))
                    self._uploaded[relative] = signature

    def close(self) -> None:
        if self.local != self.remote:
            self.sync()
            shutil.rmtree(self.local, ignore_errors=True)
