"""A standalone command's `--out` folder: written together or not at all.

`check_out` runs before the work: it refuses a folder that already holds a run's files (another
model, an older circuit) unless `--force`, and a folder it cannot write, without creating
anything. `staged` hands the command a temporary folder beside OUT (same parent, so the final
rename stays on one file system); on success its files replace OUT's, and every circuitry output
the new run did not write is removed, so no old circuit.graphml outlives a new circuit.parquet;
on failure the temporary folder is removed and OUT is as it was."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click

# Every file a standalone command writes; any of them in OUT means OUT holds a run.
RUN_FILES = ("model.pt", "metrics.json", "network.png", "circuit.parquet", "summary.json", "circuit.png",
             "circuit.graphml", "graph_eap_ig.json", "input_reach.png")
FINISHED_MARKERS = ("metrics.json", "summary.json")  # moved last: their presence marks a finished result


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def check_out(out: str, force: bool) -> Path:
    """OUT as a Path, after the checks (module doc); raises click.UsageError, one line."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{path} is a file; give a folder", param_hint="--out")
    held = [name for name in RUN_FILES if (path / name).exists()]
    if held and not force:
        raise click.BadParameter(f"{path} already holds a run ({', '.join(held)}); give a new folder, or --force "
                                 "to replace that run", param_hint="--out")
    base = _nearest_existing(path)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise click.BadParameter(f"cannot write to {path} ({base} is not writable); give a writable folder",
                                 param_hint="--out")
    return path


@contextmanager
def staged(out: Path):
    """Yield a temporary folder; on a clean exit its files become OUT's (module doc)."""
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private (0700); OUT gets a plain mkdir's mode
    try:
        yield tmp
        _commit(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _commit(tmp: Path, out: Path) -> None:
    try:
        os.rename(tmp, out)  # OUT did not exist, or is an empty folder: one rename
        return
    except OSError:
        pass
    new = {p.name for p in tmp.iterdir()}
    for name in RUN_FILES:  # another run's files, which the new one does not replace
        if name not in new:
            (out / name).unlink(missing_ok=True)
    for name in sorted(new, key=lambda n: (n in FINISHED_MARKERS, n)):
        os.replace(tmp / name, out / name)
