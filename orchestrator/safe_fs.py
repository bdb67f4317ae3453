"""The sweep folder's file system, where no link is followed: folders opened with O_NOFOLLOW |
O_DIRECTORY and worked on through their descriptors, new files made with O_CREAT | O_EXCL |
O_NOFOLLOW, replaced files renamed over within their real folder, files read through O_NOFOLLOW
descriptors (and O_NONBLOCK: a planted FIFO blocks nothing), and the sweep lock on the sweep
folder's own descriptor. Whoever can write the sweep folder can plant links anywhere in it; with
these, none of them makes the driver read, write or lock anything outside it (deploy/README.md,
"A writer of the sweep folder")."""
from __future__ import annotations

import errno
import fcntl
import io
import os
import secrets
import stat
import time
from contextlib import contextmanager
from pathlib import Path

RESULT_LIMIT_BYTES = 1 << 30
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NOFOLLOW
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
LINKED = (errno.ELOOP, errno.ENOTDIR)  # what opening a link (or a file) with DIR_FLAGS gives


class SweepBusy(RuntimeError):
    """Another circuitry process holds the sweep folder's lock."""


class UnsafeFolder(ValueError):
    """A folder the driver would write is a link or not a folder: it follows no link out of the sweep."""


class WriteFailed(OSError):
    """A write of the sweep folder failed (a full disk, a quota): one line naming the path."""


def open_dir(path: str | Path, dir_fd: int | None = None) -> int:
    """A descriptor of the real folder `path` (relative to `dir_fd`), never of a link's target."""
    try:
        return os.open(path, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in LINKED:
            raise UnsafeFolder(f"{path}: is a link or not a folder; circuitry follows no link in a sweep folder; "
                               "give a real folder") from None
        raise


@contextmanager
def opened_dir(path: str | Path, dir_fd: int | None = None):
    fd = open_dir(path, dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def sweep_lock(sweep_dir: str | Path):
    """Hold the sweep folder's lock (flock on the folder's own descriptor, exclusive, not waiting)
    while writing it: `run` (before Ray starts), `sync` and `report` each take it, so one process
    at a time writes jobs/ and jobs.parquet. No lock file: deleting a file cannot break it.
    flock is enough because the sweep folder lives on the driver's node only (deploy/README.md:
    the head's local volume); on NFS its behaviour depends on the mount, which the deploy avoids."""
    fd = open_dir(sweep_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SweepBusy(f"{sweep_dir} is in use by another circuitry run, sync or report; wait for it "
                        "or stop it first") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_new(dir_fd: int, name: str, data: bytes, fsync: bool = True) -> None:
    """A new file in the folder `dir_fd`: O_EXCL and O_NOFOLLOW, so nothing planted is written through."""
    fd = os.open(name, NEW_FILE, 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def fsync_fd(fd: int, fsync: bool = True) -> None:
    if fsync:
        os.fsync(fd)


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Replace `path` with `data`: a new, uniquely named temporary file in the same real folder,
    fsynced, renamed over it (a link at `path` is replaced, its target never written), and the
    folder fsynced. A failed write (a full disk) raises WriteFailed naming `path`; the file that
    was there stays as it was."""
    path = Path(path)
    tmp = f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with opened_dir(path.parent) as dfd:
            try:
                write_new(dfd, tmp, data, fsync)
                os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass
                raise
            fsync_fd(dfd, fsync)
    except UnsafeFolder:
        raise
    except OSError as e:
        raise WriteFailed(f"cannot write {path} ({e.strerror}); free space (or fix the folder) and run the same "
                          "command again: the results already written are kept") from None


def save_png(fig, path: Path, **kwargs) -> None:
    """A matplotlib figure written with write_atomic (never through a planted link)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    write_atomic(path, buf.getvalue(), fsync=False)


def read_regular(dir_fd: int, name: str, where: Path, limit: int = RESULT_LIMIT_BYTES) -> bytes:
    """A regular file's bytes, read through a descriptor opened without following a link (and
    without blocking on a planted FIFO); DamagedResult for anything else."""
    try:
        fd = os.open(name, os.O_RDONLY | NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    except OSError as e:
        why = "is a link (never followed)" if e.errno == errno.ELOOP else f"unreadable ({e.strerror})"
        raise DamagedResult(f"{where / name}: {why}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DamagedResult(f"{where / name}: not a regular file")
        if st.st_size > limit:
            raise DamagedResult(f"{where / name}: {st.st_size} bytes, over the {limit}-byte limit")
        return f.read(limit + 1)


class DamagedResult(ValueError):
    """A job folder that is not a finished result (unreadable, inconsistent or incomplete)."""


class UnsignedResult(DamagedResult):
    """A job record without a valid signature of this user's key (orchestrator.signing)."""


def move_links_aside(folder: Path, names: tuple[str, ...], warn) -> None:
    """Rename every entry of `names` in `folder` that is a link (the link itself, never its
    target) to `.damaged-<name>-<time>-<rand>`, with a warning line each: for the embedded MLflow
    store's files, which SQLite and MLflow open by path."""
    with opened_dir(folder) as dfd:
        for name in names:
            try:
                linked = stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                continue
            if linked:
                aside = f".damaged-{name}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
                os.rename(name, aside, src_dir_fd=dfd, dst_dir_fd=dfd)
                warn(f"warning: {folder / name} is a link; moved aside to {aside} (not followed)")
