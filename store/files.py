"""Writing files safely: the one way qrmem writes a file (exports, reports, head files, models).

`write_private(path, data)` never opens an existing file: it creates a new temporary file in the
target directory (O_EXCL | O_NOFOLLOW, mode 0600 unless told otherwise), writes and fsyncs it, then
renames it into place. So a symlink, another user's file or a hard link at the path is never written
through, a crash leaves the old file or the new one (never half of it), and nobody else can read the
data while it is written. Refused, with one line saying what to do: a symlink at the path, an
existing file unless `force`, a directory, a device or pipe, a path that is one of `refuse` (the
store's own files), a missing directory; the system's refusals (no space, no permission, read-only
file system, file too large) become the same kind of error.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputError

_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
    errno.EACCES: "permission denied; choose a directory you can write to",
    errno.EPERM: "not permitted; choose a directory you can write to",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EFBIG: "the file is larger than this system allows (see `ulimit -f`); write elsewhere",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def os_advice(exc: OSError) -> str:
    """What an OSError means for the user, in a few words."""
    return _ADVICE.get(exc.errno or 0, exc.strerror or str(exc))


def _same_file(path: Path, other: str | os.PathLike[str]) -> bool:
    if os.path.realpath(path) == os.path.realpath(other):
        return True
    try:  # a hard link to the store is the store too
        a, b = os.stat(path), os.stat(other)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_target(path: str | os.PathLike[str], *, force: bool = False,
                 refuse: Iterable[str | os.PathLike[str]] = (), what: str = "file") -> Path:
    """The checks of `write_private` without writing: an `OutputError` for a path it would refuse."""
    target = Path(os.fspath(path))
    where = os.fspath(path)
    if not where.strip():
        raise OutputError(f"the {what} path is empty; give a file path")
    try:
        st: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"cannot write {where}: {os_advice(exc)}") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{where} is a symbolic link; qrmem never writes through one (remove the link "
                          "or choose another path)")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{where} is a directory; give a file path")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{where} is not a regular file (a device, pipe or socket); give a file path")
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {where}: directory {os.fspath(parent)!r} does not exist; create it "
                          "first or choose another path")
    for other in refuse:
        if _same_file(target, other):
            raise OutputError(f"{where} is the store itself or one of its -wal, -shm, -journal files; "
                              "choose another path")
    if st is not None and not force:
        raise OutputError(f"{where} already exists; pass --force (force=True) to overwrite it")
    return target


def write_private(path: str | os.PathLike[str], data: str | bytes, *, force: bool = False,
                  refuse: Iterable[str | os.PathLike[str]] = (), mode: int = 0o600,
                  what: str = "file") -> Path:
    """Write `data` (text as UTF-8) to `path` through a new temporary file renamed into place.

    `force` allows replacing an existing regular file (never a symlink, directory or device);
    `refuse` lists paths that must never be written (compared after resolving links, and by inode);
    `mode` is the new file's permission bits (0600: owner only; the umask may only remove bits).
    """
    target = check_target(path, force=force, refuse=refuse, what=what)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = target.parent / f".{target.name[:200]}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, mode)
    except OSError as exc:
        raise OutputError(f"cannot write {os.fspath(path)}: {os_advice(exc)}") from None
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)  # rename never follows a symlink at the destination
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {os.fspath(path)}: {os_advice(exc)}; nothing was written") from None
    _fsync_dir(target.parent)
    return target


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (best effort: not every file system lets a directory be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
