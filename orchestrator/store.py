"""The sweep folder's results, `SWEEP/jobs/<job_id>/`, and their one writer: the driver.

Ray tasks write nothing here. A job returns a `JobResult` (its record and its files as bytes)
through Ray's object store, and the driver commits it:

1. write every file, then job.json, into `jobs/.tmp-<id>-<pid>-<random>/`, fsync each file;
2. fsync that folder, rename it to `jobs/<id>/`, fsync `jobs/`.

Results that arrive together are committed together (`commit_many`, one thread each, up to
COMMIT_THREADS): the filesystem folds their fsyncs into shared journal commits, so a group costs
about what a few results one after another do, and a driver receiving hundreds of results a
second keeps up (benchmarks/scale.py).

So a job folder that exists is finished (a half-written result is only ever a dot-folder, which
readers skip and `prepare` removes), and after a power loss the rename is either there with all
its files or not there at all. Only jobs of the spec that have no finished folder are submitted,
so a folder found in the way of a commit is damaged or foreign: it is moved aside to
`jobs/.damaged-<id>-<time>/`, never overwritten, never read as a result.

Reading: every folder goes through `load(folder)`, the one place that decides whether a folder
is a finished result: its name is a job id (16 hex digits), job.json is valid JSON whose job_id is
that name, every file it lists is a plain name that is present with the sha256 it was written
with, and a model.pt loads as a checkpoint (workers.model.load_checkpoint). A folder that fails
raises DamagedResult.

Healing (`heal(job_ids)`, at the start of every run, under the sweep lock): the folders of the
spec's jobs that fail `load`, and every folder in jobs/ whose name is no job id at all, are moved
aside to `jobs/.damaged-<name>-<time>-<rand>/` with a one-line warning each, and their jobs run
again. A finished result of a job the spec does not name (a grid point dropped from the spec) is
left where it is and never read, recorded or uploaded: only jobs of the spec are (`records(ids)`).
A record's fields never become a path: the folder's name, checked above, is the only id used.

Size: a result travels as one Ray object, held whole in the worker node's object store and in
the driver's memory while it is written; Ray spills objects to disk, so the practical limit is
the head's memory. `RESULT_LIMIT_BYTES` (1 GiB) stops a job with a clear error before that; the
results of this project are KB to a few MB. An output beyond it would go the same path in
chunks: a streaming generator task (`num_returns="streaming"`) yielding pieces the driver
appends to the temporary folder before the same rename.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from circuitry.workers.files import fsync_dir, json_safe, write_synced

RESULT_LIMIT_BYTES = 1 << 30
COMMIT_THREADS = 16  # results written at once by commit_many
RECORD = "job.json"
JOB_ID = re.compile(r"[0-9a-f]{16}")  # orchestrator.jobs.job_hash


def is_job_id(name) -> bool:
    return isinstance(name, str) and JOB_ID.fullmatch(name) is not None


class SweepBusy(RuntimeError):
    """Another circuitry process holds the sweep folder's lock."""


@contextmanager
def sweep_lock(sweep_dir: str | Path):
    """Hold SWEEP/.lock (flock, exclusive, not waiting) while writing the sweep folder: `run`,
    `sync` and `report` each take it, so one process at a time writes jobs/ and jobs.parquet.
    flock is enough because the sweep folder lives on the driver's node only (deploy/README.md:
    the head's local volume); on NFS its behaviour depends on the mount, which the deploy avoids."""
    sweep_dir = Path(sweep_dir)
    f = open(sweep_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise SweepBusy(f"{sweep_dir} is in use by another circuitry run, sync or report; wait for it "
                        "or stop it first") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


class DamagedResult(ValueError):
    """A job folder that is not a finished result (unreadable, inconsistent or incomplete)."""


@dataclass
class JobResult:
    """What a job hands the driver: its record (job.json) and its files, name -> bytes, in the
    order they are written."""

    record: dict
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.files.values())


def check_size(result: JobResult) -> JobResult:
    """Called in the worker: a result too big for one object fails there, naming the limit."""
    if result.nbytes > RESULT_LIMIT_BYTES:
        raise ValueError(f"job {result.record.get('label')}: its files are {result.nbytes} bytes, over the "
                         f"{RESULT_LIMIT_BYTES}-byte limit of one result (orchestrator.store.RESULT_LIMIT_BYTES)")
    return result


def _plain_name(name) -> bool:
    return isinstance(name, str) and bool(name) and name == Path(name).name and not name.startswith(".") \
        and name != RECORD


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class JobStore:
    """`SWEEP/jobs/`: finished results, one folder each, written only by the driver. `fsync=False`
    only for benchmarks/orchestration.py, to show what the durability costs."""

    def __init__(self, sweep_dir: str | Path, fsync: bool = True):
        self.root = Path(sweep_dir) / "jobs"
        self.fsync = fsync

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def prepare(self) -> None:
        """Create jobs/ and remove the half-written results of a crash (the caller holds the
        sweep lock, so no commit of another driver is under way)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.clear_temp()

    def clear_temp(self) -> None:
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        for tmp in self.root.parent.glob(".*.tmp-*"):  # write_atomic's (jobs.parquet, spec.toml)
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------ reading
    def load(self, folder: Path) -> dict:
        """The record of a finished result, or DamagedResult saying why the folder is not one."""
        if not is_job_id(folder.name):
            raise DamagedResult(f"{folder}: not a job folder (a job id is 16 hex digits)")
        try:
            rec = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError) as e:
            raise DamagedResult(f"{folder / RECORD}: unreadable ({type(e).__name__})") from None
        if not isinstance(rec, dict) or rec.get("job_id") != folder.name:
            got = rec.get("job_id") if isinstance(rec, dict) else type(rec).__name__
            raise DamagedResult(f"{folder / RECORD}: job_id {got!r} is not the folder's name")
        files, sums = rec.get("files") or [], rec.get("sha256") or {}
        if not isinstance(files, list) or not all(_plain_name(n) for n in files) or not isinstance(sums, dict):
            raise DamagedResult(f"{folder / RECORD}: its file list is not a list of plain file names")
        missing = [n for n in files if not (folder / n).is_file()]
        if missing:
            raise DamagedResult(f"{folder}: lacks {', '.join(missing)}")
        for name in files:
            if name in sums and _sha256((folder / name).read_bytes()) != sums[name]:
                raise DamagedResult(f"{folder / name}: its sha256 differs from the one written")
        if "model.pt" in files:
            from circuitry.workers.model import CheckpointError, load_checkpoint

            try:
                load_checkpoint(folder / "model.pt")
            except CheckpointError as e:
                raise DamagedResult(str(e).split(";")[0]) from None
        return rec

    def records(self, job_ids=None) -> dict[str, dict]:
        """job id -> record of every finished result (of the jobs in `job_ids` only, when given:
        other folders are not read); damaged folders are skipped."""
        out = {}
        if not self.root.is_dir():
            return out
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or (job_ids is not None and folder.name not in job_ids):
                continue
            try:
                out[folder.name] = self.load(folder)
            except DamagedResult:
                continue
        return out

    def heal(self, job_ids, warn) -> dict[str, dict]:
        """The records of the spec's finished jobs (`job_ids`); moves aside, with one warning line
        each, the spec's folders that are not finished results and every folder whose name is no
        job id (see the module doc). Results of jobs outside the spec are left alone, unread."""
        out = {}
        if not self.root.is_dir():
            return out
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or (is_job_id(entry.name) and entry.name not in job_ids):
                continue
            try:
                out[entry.name] = self.load(entry)
            except DamagedResult as e:
                aside = self.set_aside(entry)
                again = "the job runs again" if entry.name in job_ids else "it is no job of this sweep"
                warn(f"warning: {e}; moved aside to {aside.relative_to(self.root.parent)}, {again}")
        return out

    # ------------------------------------------------------------ writing
    def commit_many(self, items: list[tuple[str, JobResult]]) -> list[dict | Exception]:
        """Commit several results at once (module doc), each atomically as `commit` does; returns,
        in order, each one's record as written or the OSError/ValueError that stopped it. Every
        commit it started has ended when it returns (Ctrl-C included), so no half-written
        folder is left for another writer to race."""
        def one(item):
            try:
                return self.commit(*item)
            except (OSError, ValueError) as e:
                return e

        if len(items) <= 1:
            return [one(item) for item in items]
        with ThreadPoolExecutor(min(COMMIT_THREADS, len(items)), thread_name_prefix="circuitry-commit") as pool:
            return list(pool.map(one, items))

    def commit(self, job_id: str, result: JobResult) -> dict:
        """Write one result atomically (see the module doc); returns the record as written."""
        if not is_job_id(job_id):
            raise ValueError(f"{job_id!r} is not a job id (16 hex digits)")
        record = json_safe({**result.record, "job_id": job_id, "files": list(result.files),
                        "sha256": {name: _sha256(data) for name, data in result.files.items()}})
        for name in result.files:
            if not _plain_name(name):
                raise ValueError(f"job {job_id}: file name {name!r} is not a plain file name")
        tmp = self.root / f".tmp-{job_id}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            for name, data in result.files.items():
                write_synced(tmp / name, data, self.fsync)
            write_synced(tmp / RECORD, json.dumps(record, indent=2, sort_keys=True).encode(), self.fsync)
            fsync_dir(tmp, self.fsync)
            final = self.folder(job_id)
            if final.exists():
                self.set_aside(final)
            os.rename(tmp, final)
            fsync_dir(self.root, self.fsync)
        except BaseException:  # Ctrl-C included: leave no half-written folder behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return record

    def set_aside(self, folder: Path) -> Path:
        """Move a folder that is not a finished result out of the way, kept for inspection (a
        dot-folder: never read as a result, never uploaded)."""
        aside = self.root / f".damaged-{folder.name[:64]}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
        os.rename(folder, aside)
        return aside
