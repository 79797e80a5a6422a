"""Atomic file writes: every file odt or the pipeline writes goes through `atomic_path`.

`write_text`, `write_json` and `copy_file` are the common cases; `atomic_dir` replaces a
whole directory.

Write to a temporary file beside the target, fsync it, rename it over the target, then
fsync the directory, so a reader, or a process killed mid-write, sees the old file or the
new one, never half of one. Temporaries are named `.<target>.tmp-<host>-<pid>-<random>`:
a later write of the same target removes those of processes that are dead (killed
mid-write) and leaves a live concurrent writer's alone. An error while writing (a full
disk, a read-only directory, a file-size limit) is a `WriteError` naming the target, and
leaves the target as it was; `writer_error` makes one of a writer library's own error
(torch.save's RuntimeError), with the cause the OS gave where it can be found.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)
HOST = socket.gethostname().replace(os.sep, "_") or "host"


class WriteError(OSError):
    """Writing `filename` failed for a reason of the environment (permission, space, size limit); one line."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _write_error(err: OSError, path: Path) -> WriteError:
    return WriteError(err.errno, err.strerror or str(err), str(path))


FULL = 1 << 20  # bytes free below which a failed write is put down to a full disk


def exception_chain(err: BaseException) -> Iterator[BaseException]:
    """`err`, then what it was raised from or while handling, and so on (each once)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        yield cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__


def writer_error(err: BaseException, path: str | os.PathLike, tmp: str | os.PathLike) -> WriteError:
    """`err`, raised by a library writing `tmp` on the way to `path` (torch's zip writer raises RuntimeError
    `[enforce fail at inline_container.cc] ... unexpected pos ...`), as a WriteError naming `path` and the cause.

    The cause: the OSError in `err`'s chain (torch raises its own error while handling the
    write's), else what the file-size limit (RLIMIT_FSIZE, against the bytes `tmp` holds) or
    the free space of its file system says, else a guess.
    """
    for cause in exception_chain(err):
        if isinstance(cause, OSError) and cause.errno:
            return WriteError(cause.errno, cause.strerror or os.strerror(cause.errno), str(path))
    try:
        written = os.stat(tmp).st_size
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY and written >= soft:
            return WriteError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
        fs = os.statvfs(Path(tmp).parent)
        if (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize < FULL:  # root may use the reserve
            return WriteError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    except OSError:
        pass
    return WriteError(None, "the writer failed (disk full or file-size limit?)", str(path))


def _writing(err: OSError, tmp: Path) -> bool:
    """Whether `err` came from writing the temporary (not, say, from reading a source the block copies)."""
    name = err.filename
    return not isinstance(err, WriteError) and (name is None or str(name).startswith(str(tmp)) or err.errno in _SPACE)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _tag(kind: str) -> str:
    return f"{kind}-{HOST}-{os.getpid()}-"


def _dead(path: Path, name: str, kind: str) -> bool:
    """Whether `path` is a `kind` ("tmp" or "old") of `name` left by a dead process of this host."""
    match = re.fullmatch(rf"\.{re.escape(name)}\.{kind}-(?P<host>.+)-(?P<pid>\d+)-[A-Za-z0-9_]*(\.[^.-]*)?", path.name)
    return bool(match) and match["host"] == HOST and not _alive(int(match["pid"]))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(path: str | os.PathLike) -> None:
    """Remove the temporaries that dead processes left beside `path` (live writers' are kept)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.tmp-*"):
        if _dead(tmp, path.name, "tmp"):
            _remove(tmp)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in directory `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path to write; it replaces `path` when the block succeeds and is removed when it fails.

    `suffix` keeps the extension for writers that infer the format from it (matplotlib).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{_tag('tmp')}", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _write_error(err, path) from None
    tmp = Path(name)
    try:
        try:
            yield tmp
        except OSError as err:
            if _writing(err, tmp):
                raise _write_error(err, path) from None
            raise
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
            os.replace(tmp, path)
        except OSError as err:
            raise _write_error(err, path) from None
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)  # already renamed on success; the half-written file on failure


def recover_dir(path: str | os.PathLike) -> None:
    """Undo what a process killed in the middle of `atomic_dir`'s swap left: restore the old copy if `path`
    is missing, and remove dead processes' old copies and temporaries."""
    path = Path(path)
    olds = [p for p in path.parent.glob(f".{glob_escape(path.name)}.old-*") if _dead(p, path.name, "old")]
    if olds and not path.exists():
        newest = max(olds, key=lambda p: p.stat().st_mtime_ns)
        os.replace(newest, path)  # killed between its two renames: the old version comes back
        fsync_dir(path.parent)
        olds.remove(newest)
    for old in olds:  # killed after the swap, while removing the old version
        _remove(old)
    remove_stale(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory to fill; it replaces the directory `path` when the block succeeds.

    The old directory is renamed aside (`.<name>.old-<host>-<pid>-`) before the new one is
    renamed in; a process killed between the two renames leaves `path` missing, and the next
    call (or `recover_dir`) puts the old copy back. A failed block leaves `path` untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_tag('tmp')}", dir=path.parent))
    except OSError as err:
        raise _write_error(err, path) from None
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and str(err.filename or "").startswith(str(tmp)):
            # a file inside the new directory: named where it was going
            raise WriteError(err.errno, err.strerror, str(path / Path(err.filename).relative_to(tmp))) from None
        if isinstance(err, OSError) and _writing(err, tmp):
            raise _write_error(err, path) from None
        raise
    old = path.with_name(f".{path.name}.{_tag('old')}0")
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as err:
        if old.exists() and not path.exists():
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(err, path) from None
    fsync_dir(path.parent)
    _remove(old)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
