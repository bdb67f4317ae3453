"""MNIST, for users who have the four standard IDX files; nothing is downloaded.

The folder comes from the sweep spec / `--data-dir` (passed to `load_idx_folder`) or from
$CIRCUITRY_MNIST_DIR. Files may be gzipped (`.gz`) or not:
    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte
Trained as mnist_3.5.ipynb does (docs/bimt_reference.md): 784-100-100-10 on 2-D sheets (28x28 input,
10x10 hidden, outputs on a ring), Manhattan wire lengths, the per-layer mean connection cost with
l0 0.5 and wire length weighted 2 (none on the last layer), biases penalised from the start, lam
0.01 -> 0.1 at steps/4 -> 1.0 at steps/2, minibatches of 100, MSE on one-hot labels, lr 1e-3, no
input swaps, the 30 most connected neurons relocated every 500 steps, 40,000 steps.
"""
from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch

from circuitry.tasks.base import Data, Task, TaskDataError
from circuitry.tasks.recipe import Recipe

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


MAX_IDX_BYTES = 1 << 28  # the largest MNIST file is 47 MB; a header claiming more is refused unread


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file: 2 zero bytes, a dtype byte, a rank byte, big-endian uint32 dims, data.
    Reads (and decompresses) at most the size its header declares, so a small `.gz` that inflates
    to gigabytes is refused without being inflated."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES or not 1 <= magic[3] <= 4:
                raise MnistDataError(f"{path}: not an IDX file (bad magic number); {LAYOUT}")
            rank = magic[3]
            head = f.read(4 * rank)
            if len(head) < 4 * rank:
                raise MnistDataError(f"{path}: truncated IDX header; {LAYOUT}")
            dims = [int.from_bytes(head[4 * i: 4 + 4 * i], "big") for i in range(rank)]
            dtype = np.dtype(_DTYPES[magic[2]])
            expected = math.prod(dims) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise MnistDataError(f"{path}: its header declares {expected} data bytes ({dims}), over the "
                                     f"{MAX_IDX_BYTES}-byte limit; {LAYOUT}")
            raw = f.read(expected + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise MnistDataError(f"{path}: cannot read ({e}); {LAYOUT}") from None
    if len(raw) != expected:
        got = f"at least {expected + 1}" if len(raw) > expected else str(len(raw))
        raise MnistDataError(f"{path}: holds {got} data bytes, its header {dims} says {expected}; {LAYOUT}")
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise MnistDataError(f"{folder / name}: missing; {LAYOUT} in {folder}")


def _check_split(folder, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """MNIST's layout: unsigned-byte 28x28 images, integer labels 0..9, as many of each, not none."""
    where = f"{folder}: {split} split:"
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise MnistDataError(f"{where} images have shape {list(x.shape)}, expected [N, 28, 28]; {LAYOUT}")
    if x.dtype != np.uint8:
        raise MnistDataError(f"{where} images are {x.dtype.name}, expected unsigned bytes (IDX type 0x08); {LAYOUT}")
    if y.ndim != 1 or len(x) != len(y):
        raise MnistDataError(f"{where} images {list(x.shape)} and labels {list(y.shape)} do not pair up; {LAYOUT}")
    if len(y) == 0:
        raise MnistDataError(f"{where} holds no examples; {LAYOUT}")
    if y.dtype.kind not in "iu":
        raise MnistDataError(f"{where} labels are {y.dtype.name}, expected integers (IDX type 0x08); {LAYOUT}")
    bad = (y < 0) | (y > 9)
    if bad.any():
        raise MnistDataError(f"{where} label {int(y[bad][0])} at index {int(np.argmax(bad))} is not a digit 0..9; "
                             f"{LAYOUT}")


def load_idx_folder(folder: str | Path | None = None) -> Data:
    folder = folder or os.environ.get("CIRCUITRY_MNIST_DIR")
    if not folder:
        raise MnistDataError("mnist: no data folder; set CIRCUITRY_MNIST_DIR or pass --data-dir, " + LAYOUT)
    arrays = {key: read_idx(_find(Path(folder), name)) for key, name in FILES.items()}
    for split in ("train", "test"):
        _check_split(folder, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
    as_x = lambda a: torch.tensor(a.reshape(len(a), -1), dtype=torch.float32) / 255.0  # noqa: E731
    as_y = lambda a: torch.tensor(a.astype(np.int64))  # noqa: E731
    return Data(as_x(arrays["x_train"]), as_y(arrays["y_train"]), as_x(arrays["x_test"]), as_y(arrays["y_test"]))


MNIST_RECIPE = Recipe(
    steps=40000, lr=1e-3, batch_size=100, loss="mse_onehot", lam=0.01,
    lam_phases=((0.0, 1.0), (0.25, 10.0), (0.5, 100.0)), bias_from=0.0, cost_norm="mean", l0=0.5,
    distance_weight=2.0, last_layer_distance=False, distance="manhattan", output_layout="ring",
    swap_inputs=False, swap_every=500, top_k=30,
)


def generate(seed: int) -> Data:
    """MNIST has a fixed split; the seed only changes initialisation and corruption pairing."""
    return load_idx_folder()


mnist = Task(
    name="mnist",
    kind="classification",
    shape=(784, 100, 100, 10),
    generate=generate,
    description="MNIST from local IDX files ($CIRCUITRY_MNIST_DIR), 60k train / 10k test",
    input_grid=(28, 28),
    recipe=MNIST_RECIPE,
)
