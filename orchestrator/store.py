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

Reading: every entry goes through `_read`, the one place that decides whether it is a finished
result: its name is a job id (16 hex digits) and it is a real folder (opened with O_NOFOLLOW |
O_DIRECTORY through the descriptor of a real jobs/ in a real sweep folder: a link anywhere is never
followed); job.json is a regular file of valid JSON whose job_id is that name; the folder holds
exactly the files the record lists, each a regular file (read through an O_NOFOLLOW descriptor)
whose sha256, required, is the one in the record; the record's HMAC signature is this user's
(orchestrator.signing), so a record nobody with the key wrote is never trusted; and a model.pt
passes every check of workers.model.check_checkpoint. What is uploaded or read later is the bytes
`read` returns, never a path. A folder that fails raises DamagedResult.

Healing (`heal(job_ids)`, at the start of every run, under the sweep lock): the entries of the
spec's jobs that fail, and every entry in jobs/ whose name is no job id, are moved aside to
`jobs/.damaged-<name>-<time>-<rand>` (a link is renamed itself, never followed) with a one-line
warning each (one line for all the unsigned records), and their jobs run again. A jobs/ that is a
link is moved aside the same way (`prepare`). A finished result of a job the spec does not name is
left where it is and never read, recorded or uploaded: only jobs of the spec are (`scan(ids)`).
A record's fields never become a path: the folder's name, checked above, is the only id used.
Writes go through the same descriptors: new files with O_CREAT | O_EXCL | O_NOFOLLOW, replaced
files by rename within their real folder (write_atomic), so nothing planted is written through.

Size: a result travels as one Ray object, held whole in the worker node's object store and in
the driver's memory while it is written; Ray spills objects to disk, so the practical limit is
the head's memory. `RESULT_LIMIT_BYTES` (1 GiB) stops a job with a clear error before that; the
results of this project are KB to a few MB. An output beyond it would go the same path in
chunks: a streaming generator task (`num_returns="streaming"`) yielding pieces the driver
appends to the temporary folder before the same rename.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from circuitry.orchestrator.safe_fs import (RESULT_LIMIT_BYTES, DamagedResult, SweepBusy, UnsafeFolder,  # noqa: F401
                                            UnsignedResult, WriteFailed, fsync_fd, write_new, open_dir,
                                            opened_dir, read_regular, save_png, sweep_lock, write_atomic)
from circuitry.orchestrator.signing import sign, signed
from circuitry.workers.files import json_safe

COMMIT_THREADS = 16  # results written at once by commit_many
RECORD = "job.json"
JOB_ID = re.compile(r"[0-9a-f]{16}")  # orchestrator.jobs.job_hash


def is_job_id(name) -> bool:
    return isinstance(name, str) and JOB_ID.fullmatch(name) is not None


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
    only for benchmarks/orchestration.py, to show what the durability costs. Every operation goes
    through descriptors of real folders (open_dir): nothing it does follows a link."""

    def __init__(self, sweep_dir: str | Path, fsync: bool = True):
        self.sweep_dir = Path(sweep_dir)
        self.root = self.sweep_dir / "jobs"
        self.fsync = fsync

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    @contextmanager
    def _jobs(self):
        """A descriptor of jobs/ (UnsafeFolder when it or the sweep folder is a link)."""
        with opened_dir(self.sweep_dir) as sfd, opened_dir("jobs", sfd) as jfd:
            yield jfd

    def prepare(self, warn=None) -> None:
        """Create jobs/ (moving aside a link or file in its place, not followed) and remove the
        half-written results of a crash (the caller holds the sweep lock)."""
        with opened_dir(self.sweep_dir) as sfd:
            try:
                st = os.stat("jobs", dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                aside = f".damaged-jobs-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
                os.rename("jobs", aside, src_dir_fd=sfd, dst_dir_fd=sfd)
                (warn or print)(f"warning: {self.root} is a link or a file, not a folder; moved aside to "
                                f"{aside} (not followed), every job runs again")
                st = None
            if st is None:
                os.mkdir("jobs", dir_fd=sfd)
        self.clear_temp()

    def clear_temp(self) -> None:
        """Remove half-written results (`jobs/.tmp-*`) and write_atomic's temporary files, each
        through the real folder's descriptor: a link named like one is removed, not followed."""
        try:
            with opened_dir(self.sweep_dir) as sfd:
                for entry in os.scandir(sfd):
                    if entry.name.startswith(".") and ".tmp-" in entry.name and not entry.is_dir(follow_symlinks=False):
                        os.unlink(entry.name, dir_fd=sfd)
                with opened_dir("jobs", sfd) as jfd:
                    for entry in os.scandir(jfd):
                        if not entry.name.startswith(".tmp-"):
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.name, dir_fd=jfd, ignore_errors=True)
                        else:
                            os.unlink(entry.name, dir_fd=jfd)
        except (FileNotFoundError, UnsafeFolder):  # no jobs/ yet, or a link that prepare moves aside
            pass

    # ------------------------------------------------------------ reading
    def _read(self, jfd: int, name: str, contents: bool) -> tuple[dict, dict[str, bytes]]:
        """(record, files) of a finished result, or DamagedResult saying why the entry is not one
        (module doc); files are read only when `contents` (else checked and dropped)."""
        where = self.root / name
        if not is_job_id(name):
            raise DamagedResult(f"{where}: not a job folder (a job id is 16 hex digits)")
        try:
            ffd = open_dir(name, jfd)
        except UnsafeFolder:
            raise DamagedResult(f"{where}: a link or a file, not a folder (never followed)") from None
        except OSError as e:
            raise DamagedResult(f"{where}: unreadable ({e.strerror})") from None
        try:
            try:
                rec = json.loads(read_regular(ffd, RECORD, where))
            except ValueError as e:
                raise DamagedResult(f"{where / RECORD}: unreadable ({type(e).__name__})") from None
            if not isinstance(rec, dict) or rec.get("job_id") != name:
                got = rec.get("job_id") if isinstance(rec, dict) else type(rec).__name__
                raise DamagedResult(f"{where / RECORD}: job_id {got!r} is not the folder's name")
            files, sums = rec.get("files"), rec.get("sha256")
            if not isinstance(files, list) or not all(_plain_name(n) for n in files) or len(set(files)) != len(files):
                raise DamagedResult(f"{where / RECORD}: its file list is not a list of plain file names")
            if not isinstance(sums, dict) or any(not isinstance(sums.get(n), str) for n in files):
                raise DamagedResult(f"{where / RECORD}: a file it lists has no sha256")
            present = set(os.listdir(ffd)) - {RECORD}
            if present - set(files):
                raise DamagedResult(f"{where}: holds {', '.join(sorted(present - set(files)))}, which its record "
                                    "does not list")
            if set(files) - present:
                raise DamagedResult(f"{where}: lacks {', '.join(n for n in files if n not in present)}")
            if not signed(rec):
                raise UnsignedResult(f"{where / RECORD}: no valid signature of this user's key")
            data = {}
            for n in files:
                blob = read_regular(ffd, n, where)
                if _sha256(blob) != sums[n]:
                    raise DamagedResult(f"{where / n}: its sha256 differs from the one written")
                if n == "model.pt":
                    from circuitry.workers.model import CheckpointError, checkpoint_from_bytes

                    try:
                        checkpoint_from_bytes(blob, where / n)
                    except CheckpointError as e:
                        raise DamagedResult(str(e).split(";")[0]) from None
                if contents:
                    data[n] = blob
            return rec, data
        finally:
            os.close(ffd)

    def read(self, job_id: str) -> tuple[dict, dict[str, bytes]]:
        """A finished result's signed record and its files' checked bytes (DamagedResult if none):
        what is uploaded or read is these bytes, never a path."""
        with self._jobs() as jfd:
            return self._read(jfd, job_id, contents=True)

    def read_file(self, job_id: str, name: str) -> bytes:
        return self.read(job_id)[1][name]

    def trusted_file(self, job_id, name: str) -> bytes | None:
        """A file of a signed, finished result; None when `job_id` is no id, no such result or file."""
        if not is_job_id(job_id):
            return None
        try:
            return self.read(job_id)[1].get(name)
        except (DamagedResult, OSError):  # UnsafeFolder included
            return None

    def _entries(self, jfd: int) -> list[str]:
        return sorted(e for e in os.listdir(jfd) if not e.startswith("."))

    def scan(self, job_ids=None) -> tuple[dict[str, dict], dict[str, str]]:
        """(job id -> record of every finished, signed result, job id -> why not, for the rest);
        of the jobs in `job_ids` only, when given (other folders are not read)."""
        out, rejected = {}, {}
        try:
            with self._jobs() as jfd:
                for name in self._entries(jfd):
                    if job_ids is not None and name not in job_ids:
                        continue
                    try:
                        out[name] = self._read(jfd, name, contents=False)[0]
                    except DamagedResult as e:
                        rejected[name] = str(e)
        except (FileNotFoundError, UnsafeFolder):
            pass
        return out, rejected

    def records(self, job_ids=None) -> dict[str, dict]:
        """job id -> record of every finished, signed result (see scan); the rest are skipped."""
        return self.scan(job_ids)[0]

    def heal(self, job_ids, warn) -> dict[str, dict]:
        """The records of the spec's finished jobs (`job_ids`); moves aside, with one warning line
        each, the spec's folders that are not finished results and every entry whose name is no
        job id, and with one line for all, the records without a valid signature (module doc).
        Results of jobs outside the spec are left alone, unread."""
        out, unsigned = {}, 0
        try:
            with self._jobs() as jfd:
                for name in self._entries(jfd):
                    if is_job_id(name) and name not in job_ids:
                        continue
                    try:
                        out[name] = self._read(jfd, name, contents=False)[0]
                    except DamagedResult as e:
                        aside = self._set_aside(jfd, name)
                        if isinstance(e, UnsignedResult):
                            unsigned += 1
                            continue
                        again = "the job runs again" if name in job_ids else "it is no job of this sweep"
                        warn(f"warning: {e}; moved aside to jobs/{aside}, {again}")
        except FileNotFoundError:
            return out
        if unsigned:
            warn(f"warning: {unsigned} job records carry no valid signature of this user's key (written before "
                 "records were signed, with another key, or planted); moved aside to jobs/.damaged-*, their jobs "
                 "run again")
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
        """Write one result atomically (see the module doc); returns the signed record as written."""
        if not is_job_id(job_id):
            raise ValueError(f"{job_id!r} is not a job id (16 hex digits)")
        for name in result.files:
            if not _plain_name(name):
                raise ValueError(f"job {job_id}: file name {name!r} is not a plain file name")
        record = json_safe({**result.record, "job_id": job_id, "files": list(result.files),
                            "sha256": {name: _sha256(data) for name, data in result.files.items()}})
        record.pop("signature", None)
        record = sign(record)
        tmp = f".tmp-{job_id}-{os.getpid()}-{secrets.token_hex(4)}"
        with self._jobs() as jfd:
            os.mkdir(tmp, dir_fd=jfd)
            try:
                with opened_dir(tmp, jfd) as tfd:
                    for name, data in result.files.items():
                        write_new(tfd, name, data, self.fsync)
                    write_new(tfd, RECORD, json.dumps(record, indent=2, sort_keys=True).encode(), self.fsync)
                    fsync_fd(tfd, self.fsync)
                try:
                    os.stat(job_id, dir_fd=jfd, follow_symlinks=False)
                    self._set_aside(jfd, job_id)
                except FileNotFoundError:
                    pass
                os.rename(tmp, job_id, src_dir_fd=jfd, dst_dir_fd=jfd)
                fsync_fd(jfd, self.fsync)
            except BaseException:  # Ctrl-C included: leave no half-written folder behind
                shutil.rmtree(tmp, dir_fd=jfd, ignore_errors=True)
                raise
        return record

    def _set_aside(self, jfd: int, name: str) -> str:
        aside = f".damaged-{name[:64]}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
        os.rename(name, aside, src_dir_fd=jfd, dst_dir_fd=jfd)  # a link is renamed, never followed
        return aside

    def set_aside(self, folder: str | Path) -> Path:
        """Move an entry of jobs/ that is not a finished result out of the way, kept for
        inspection (a dot-entry: never read as a result, never uploaded); a link is moved, not
        followed."""
        with self._jobs() as jfd:
            return self.root / self._set_aside(jfd, Path(folder).name)
