"""MNIST, for users who have the four standard IDX files; nothing is downloaded.

The folder comes from the sweep spec / `--data-dir` (passed to `load_idx_folder`) or from
$CIRCUITRY_MNIST_DIR. Files may be gzipped (`.gz`) or not:
    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte
Settings as BIMT's MNIST run: 784-200-200-10 on 2-D sheets (28x28 input), lam 0.01, swaps every
500 steps, 40,000 steps (a spec can shorten them).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from tasks.base import Data, Task, TaskDataError

FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
LAYOUT = "expected the four IDX files " + ", ".join(FILES.values()) + " (optionally .gz)"
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class MnistDataError(TaskDataError):
    """A missing or malformed MNIST file; the message names the file and the expected layout."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file: 2 zero bytes, a dtype byte, a rank byte, big-endian uint32 dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise MnistDataError(f"{path}: cannot read ({e}); {LAYOUT}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise MnistDataError(f"{path}: not an IDX file (bad magic number); {LAYOUT}")
    rank = raw[3]
    header = 4 + 4 * rank
    if len(raw) < header:
        raise MnistDataError(f"{path}: truncated IDX header; {LAYOUT}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise MnistDataError(f"{path}: holds {len(raw) - header} data bytes, its header {dims} says {expected}; {LAYOUT}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise MnistDataError(f"{folder / name}: missing; {LAYOUT} in {folder}")


def load_idx_folder(folder: str | Path | None = None) -> Data:
    folder = folder or os.environ.get("CIRCUITRY_MNIST_DIR")
    if not folder:
        raise MnistDataError("mnist: no data folder; set CIRCUITRY_MNIST_DIR or pass --data-dir, " + LAYOUT)
    arrays = {key: read_idx(_find(Path(folder), name)) for key, name in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise MnistDataError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not pair up; {LAYOUT}")
    as_x = lambda a: torch.tensor(a.reshape(len(a), -1), dtype=torch.float32) / 255.0  # noqa: E731
    as_y = lambda a: torch.tensor(a.astype(np.int64))  # noqa: E731
    return Data(as_x(arrays["x_train"]), as_y(arrays["y_train"]), as_x(arrays["x_test"]), as_y(arrays["y_test"]))


def generate(seed: int) -> Data:
    """MNIST has a fixed split; the seed only changes initialisation and corruption pairing."""
    return load_idx_folder()


mnist = Task(
    name="mnist",
    kind="classification",
    shape=(784, 200, 200, 10),
    generate=generate,
    description="MNIST from local IDX files ($CIRCUITRY_MNIST_DIR), 60k train / 10k test",
    input_grid=(28, 28),
    defaults={"lam": 1e-2, "steps": 40000, "swap_every": 500},
)
