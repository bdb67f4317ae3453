"""`circuitry train`'s checkpoints: OUT/.checkpoint.pt every `--checkpoint-every` steps
(workers.train_state), so a run cut short (Ctrl-C, a crash, a closed terminal) and started again
with the same options goes on from its last checkpoint instead of step 0. The file is a dot-file:
OUT holding only it holds no run (orchestrator.outdir), and it is removed once the run's files
are written. A checkpoint of other options, or bytes that are no training state, is ignored with
one line on stderr and the run starts from step 0; it is read with `weights_only=True`, so a
planted file runs no code (it is the user's own folder, as model.pt is: unsigned, unlike a
sweep's checkpoints, orchestrator.checkpoints)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

CHECKPOINT = ".checkpoint.pt"


def _ignored(path: Path, why) -> None:
    click.echo(f"warning: {path}: not a checkpoint of this run ({why}); starting from step 0", err=True)


def _held(path: Path) -> dict | None:
    """The training state in `path`, if it is a regular file holding one (else None, with a line
    on stderr when something else is there)."""
    from circuitry.workers.train_state import ResumeMismatch, from_bytes

    if not os.path.lexists(path):
        return None
    try:
        if path.is_symlink() or not path.is_file():
            raise ResumeMismatch("a link or not a file")
        return from_bytes(path.read_bytes())
    except (ResumeMismatch, OSError) as e:
        return _ignored(path, e)


def train_resumable(config, out: Path, every: int, progress=None):
    """workers.train.train from OUT's checkpoint when it is one of this run, keeping a new one
    every `every` steps (0: none); returns its TrainResult."""
    from circuitry.orchestrator.safe_fs import write_atomic
    from circuitry.workers.train import train
    from circuitry.workers.train_state import ResumeMismatch, check, to_bytes

    path = out / CHECKPOINT
    resume = _held(path)
    if resume is not None:
        try:
            check(resume, config.resolved().record())
        except ResumeMismatch as e:
            resume = _ignored(path, e)
    if resume is not None:
        click.echo(f"resuming from step {resume['step']:,} ({path})", err=True)
        if progress is not None:  # the bar starts where the run does
            progress(resume["step"], 0, None)

    def keep(state: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, to_bytes(state))

    try:
        return train(config, progress=progress, resume=resume, checkpoint_every=every, on_checkpoint=keep)
    except KeyboardInterrupt:
        held = _held(path)  # what is on disk, whenever the interrupt came
        kept = held["step"] if held is not None else 0
        if kept:
            click.echo(f"\ninterrupted: {path} holds step {kept:,}; the same command goes on from there", err=True)
        else:
            click.echo(f"\ninterrupted before the first checkpoint (every {every:,} steps): nothing kept", err=True)
        sys.exit(130)


def drop_checkpoint(out: Path) -> None:
    """The run's files are written: its checkpoint is of no more use."""
    path = out / CHECKPOINT
    if os.path.lexists(path) and not path.is_dir():
        path.unlink()
