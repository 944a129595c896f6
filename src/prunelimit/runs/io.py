"""Atomic file writes: a crash never leaves half a file behind.

Everything is written to a temporary file in the target directory and moved into place with
``os.replace`` (atomic on POSIX and Windows within one filesystem).
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from prunelimit.errors import PrunelimitError

# errno values that describe the user's file system, not a bug: the message says which path and why
_FS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST, errno.ENOTDIR,
              errno.EISDIR, errno.ENAMETOOLONG, errno.ENOENT}


class FileSystemError(PrunelimitError):
    """A file or directory could not be written (read-only, full disk, a file where a folder should be)."""


def filesystem_error(path: str | os.PathLike, e: OSError, doing: str = "write") -> PrunelimitError:
    """One-line error naming ``path`` for an ``OSError`` the user's file system caused."""
    where = e.filename if getattr(e, "filename", None) else path
    hint = {errno.ENOSPC: "free some space or choose another --out",
            errno.EDQUOT: "free some space or choose another --out",
            errno.EROFS: "choose a writable --out",
            errno.EACCES: "check the permissions or choose another --out",
            errno.EPERM: "check the permissions or choose another --out",
            errno.EEXIST: "a file is in the way of a directory; choose another --out",
            errno.ENOTDIR: "a file is in the way of a directory; choose another --out",
            errno.EISDIR: "give a file name, not a directory"}.get(e.errno, "check the path")
    return FileSystemError(f"cannot {doing} {os.fspath(where)!r}: {e.strerror or e} (errno {e.errno}); {hint}")


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with a one-line error when a file is in the way or the disk refuses."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in _FS_ERRNOS:
            raise filesystem_error(path, e, "create the directory") from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str | os.PathLike, write_fn, mode: str = "wb") -> Path:
    path = Path(path)
    if path.is_dir():
        raise FileSystemError(f"cannot write {str(path)!r}: it is a directory; give a file name inside it, "
                              f"e.g. {str(path / 'file')!r}")
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in _FS_ERRNOS:
            raise filesystem_error(path, e) from None
        raise
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in _FS_ERRNOS:
            raise filesystem_error(path, e) from None
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temp file. Save only tensors/plain containers so that
    ``torch.load(path, weights_only=True)`` can read it back."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(list(header))
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    return atomic_write_text(path, out.getvalue())


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return _fmt(v.item())
    return v


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"cannot write {type(o).__name__} to JSON")
