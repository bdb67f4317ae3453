"""Training checkpoints within a job, kept by the driver: `SWEEP/checkpoints/<job_id>.ckpt`.

The one-writer rule holds for them as for results: a worker never writes the sweep folder. Every
`[train] checkpoint_every` steps a training worker hands its state (workers.train_state, as bytes)
to the progress actor (orchestrator.remote) and waits until the actor holds it; the actor reports
a "checkpoint" event, and the driver, draining events, fetches the newest state and writes it
here. A retried attempt (worker death, TransientError) asks the actor for its job's newest state;
a later run of the sweep (after Ctrl-C, a failure or a crash of the driver) finds the file here
and hands it to the actor before it submits the job. When the job's result is committed, its
checkpoint is removed.

A file is one signed JSON header line, then the state's bytes:

    {"format": "circuitry.checkpoint/1", "job_id": ..., "step": ..., "bytes": ..., "sha256": ...,
     "signature": ...}\\n<torch.save bytes of the state>

The header is signed like job records (orchestrator.signing); the sha256 binds the bytes to it. A
file that fails any check (a link, not a regular file, no valid signature, another job's, bytes that
differ) is ignored with a one-line warning and removed, and its job starts from step 0: a planted
checkpoint is never loaded. A `checkpoints` that is a link or a file is moved aside
(`.damaged-checkpoints-<time>-<rand>`, not followed) with one line. Written with write_atomic (a new
file renamed over the old one), so a crash mid-write leaves the previous checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import time
from pathlib import Path

from circuitry.orchestrator.safe_fs import DamagedResult, UnsafeFolder, opened_dir, read_regular, write_atomic
from circuitry.orchestrator.signing import sign, signed
from circuitry.orchestrator.store import is_job_id

FOLDER = "checkpoints"
FORMAT = "circuitry.checkpoint/1"


class CheckpointStore:
    """The driver's checkpoints of unfinished train jobs (module doc). `warn(line)` says why one is
    ignored or could not be written: neither stops a sweep (a checkpoint only saves time)."""

    def __init__(self, sweep_dir: str | Path, warn=print):
        self.sweep_dir = Path(sweep_dir)
        self.root = self.sweep_dir / FOLDER
        self.warn = warn

    def path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.ckpt"

    def prepare(self) -> None:
        """Move aside a `checkpoints` that is not a real folder (module doc)."""
        with opened_dir(self.sweep_dir) as sfd:
            try:
                st = os.stat(FOLDER, dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode):
                return
            aside = f".damaged-{FOLDER}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
            os.rename(FOLDER, aside, src_dir_fd=sfd, dst_dir_fd=sfd)  # the link itself, never its target
        self.warn(f"warning: {self.root} is a link or a file, not a folder; moved aside to {aside} (not followed), "
                  "every train job starts from step 0")

    def save(self, job_id: str, step: int, state: bytes) -> bool:
        """Keep `state`, the job's state after `step` steps, in place of the one before."""
        if not is_job_id(job_id):
            raise ValueError(f"{job_id!r} is not a job id (16 hex digits)")
        header = sign({"format": FORMAT, "job_id": job_id, "step": int(step), "bytes": len(state),
                       "sha256": hashlib.sha256(state).hexdigest()})
        try:
            with opened_dir(self.sweep_dir) as sfd:
                try:
                    os.mkdir(FOLDER, 0o755, dir_fd=sfd)
                except FileExistsError:
                    pass
            write_atomic(self.path(job_id), json.dumps(header, sort_keys=True).encode() + b"\n" + state)
            return True
        except (OSError, UnsafeFolder) as e:
            self.warn(f"warning: the checkpoint of job {job_id} at step {step} could not be written ({e}); "
                      "the job goes on, and would start again from its last kept checkpoint")
            return False

    def load(self, job_id: str) -> tuple[int, bytes] | None:
        """(step, state) of the job's checkpoint if there is a valid one; None otherwise (a bad
        one is removed with a one-line warning: module doc)."""
        if not is_job_id(job_id):
            return None
        where = self.path(job_id)
        try:
            with opened_dir(self.sweep_dir) as sfd, opened_dir(FOLDER, sfd) as cfd:
                os.stat(where.name, dir_fd=cfd, follow_symlinks=False)  # FileNotFoundError: none kept
                blob = read_regular(cfd, where.name, self.root)
        except FileNotFoundError:
            return None
        except (DamagedResult, UnsafeFolder, OSError) as e:
            return self._ignore(job_id, str(e))
        head, sep, state = blob.partition(b"\n")
        try:
            header = json.loads(head) if sep else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            return self._ignore(job_id, f"{where}: not a circuitry checkpoint")
        if not signed(header):
            return self._ignore(job_id, f"{where}: no valid signature of this user's key")
        if header.get("job_id") != job_id or hashlib.sha256(state).hexdigest() != header.get("sha256"):
            return self._ignore(job_id, f"{where}: its job id or sha256 is not the signed one")
        return int(header["step"]), state

    def _ignore(self, job_id: str, why: str) -> None:
        self.warn(f"warning: {why}; ignored and removed, the job starts from step 0")
        self.remove(job_id)
        return None

    def remove(self, job_id: str) -> None:
        """Forget the job's checkpoint (its result is committed, or the file is bad)."""
        if not is_job_id(job_id):
            return
        try:
            with opened_dir(self.sweep_dir) as sfd, opened_dir(FOLDER, sfd) as cfd:
                os.unlink(self.path(job_id).name, dir_fd=cfd)  # a link is removed, never followed
        except (FileNotFoundError, UnsafeFolder):
            pass
        except OSError as e:
            self.warn(f"warning: the finished job {job_id}'s checkpoint could not be removed ({e.strerror})")

    def job_ids(self) -> list[str]:
        """The jobs that have a checkpoint file (unchecked)."""
        try:
            with opened_dir(self.sweep_dir) as sfd, opened_dir(FOLDER, sfd) as cfd:
                names = os.listdir(cfd)
        except (FileNotFoundError, UnsafeFolder):
            return []
        return sorted(n[:-5] for n in names if n.endswith(".ckpt") and is_job_id(n[:-5]))


class HeldCheckpoints:
    """The driver's checkpoints: the files (CheckpointStore) and the progress actor's copies
    (orchestrator.remote.ProgressActor), kept in step by the scheduler's calls."""

    def __init__(self, sweep_dir: str | Path, ray, actor, finished=(), warn=print):
        self.files = CheckpointStore(sweep_dir, warn)
        self.files.prepare()
        self.ray, self.actor = ray, actor
        # the driver is the folder's only writer, so this set is what the folder holds: most jobs
        # never keep a checkpoint, and they cost no file system call at submission or commit
        self.on_disk = set(self.files.job_ids())
        for job_id in self.on_disk & set(finished):  # the driver died between commit and removal
            self._remove(job_id)

    def hand_over(self, job_id: str) -> bool:
        """Before the job is submitted: give the actor the job's checkpoint file, if a valid one
        is kept, and wait until it holds it (so the job finds it); whether one was."""
        held = self.files.load(job_id) if job_id in self.on_disk else None
        if held is None:
            self.on_disk.discard(job_id)  # a bad file was removed
        else:
            self.ray.get(self.actor.keep_checkpoint.remote(job_id, *held, False))
        return held is not None

    def write_newest(self, job_id: str) -> None:
        """A "checkpoint" event: write the newest state the actor holds for the job (none once
        the job finished: `finished` made the actor forget it, and the driver's calls to the
        actor run in order)."""
        held = self.ray.get(self.actor.checkpoint_of.remote(job_id, True))
        if held is not None and self.files.save(job_id, *held):
            self.on_disk.add(job_id)

    def finished(self, job_id: str) -> None:
        """The job's result is committed: its checkpoint is of no more use."""
        if job_id in self.on_disk:
            self._remove(job_id)
        self.actor.forget.remote(job_id)

    def _remove(self, job_id: str) -> None:
        self.files.remove(job_id)
        self.on_disk.discard(job_id)
