"""Writing results: strict JSON and files replaced atomically. The one place both the CLI's
writers (workers.outputs, workers.discover) and the sweep's store (orchestrator.store) take them
from, so a crash never leaves a finished-looking half file and every JSON file holds only JSON."""
from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path


def json_safe(x):
    """JSON-safe: non-finite floats -> None, numpy/torch scalars -> numbers, keys -> strings,
    anything else -> its str."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        try:
            return json_safe(x.item())
        except (ValueError, RuntimeError):
            return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def json_bytes(obj) -> bytes:
    """Strict JSON (NaN/inf -> null, numpy scalars as numbers), indented, keys sorted."""
    return json.dumps(json_safe(obj), indent=2, sort_keys=True).encode()


def write_synced(path: Path, data: bytes, fsync: bool = True) -> None:
    """Create `path` (it must not exist) with `data`, flushed to the disk when `fsync`."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def fsync_dir(path: Path, fsync: bool = True) -> None:
    """Flush a folder's entries (a rename in it) to the disk."""
    if not fsync:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Replace `path` with `data`: a uniquely named temporary file beside it, fsynced, renamed over
    it, and the folder fsynced (concurrent writers never share a temporary file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write_synced(tmp, data, fsync)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent, fsync)


def write_files(files: dict[str, bytes], out_dir: str | Path, fsync: bool = False) -> Path:
    """Write {name: bytes} into OUT, in order (the last one marks the result finished), each
    atomically (`write_atomic`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomic(out / name, data, fsync)
    return out
