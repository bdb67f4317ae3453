import gzip
import struct

import numpy as np
import pytest
import torch

from circuitry.tasks import get_task
from circuitry.tasks.mnist import FILES, MnistDataError, load_idx_folder, read_idx


def write_idx(path, array: np.ndarray, dtype_code=0x08, compress=False):
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def write_mnist(folder, n_train=6, n_test=4, compress=False):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, name in FILES.items():
        write_idx(folder / (name + (".gz" if compress else "")), arrays[key], compress=compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_reads_written_idx_files(tmp_path, compress):
    arrays = write_mnist(tmp_path, compress=compress)
    data = load_idx_folder(tmp_path)
    assert data.x_train.shape == (6, 784) and data.x_test.shape == (4, 784)
    assert torch.allclose(data.x_train[2], torch.tensor(arrays["x_train"][2].reshape(-1) / 255.0, dtype=torch.float32))
    assert data.y_test.tolist() == arrays["y_test"].tolist() and data.y_test.dtype == torch.long


def test_idx_dtypes_and_shapes(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a, dtype_code=0x0C)
    assert np.array_equal(read_idx(tmp_path / "a"), a)


def test_missing_and_malformed_files_are_named(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    (tmp_path / FILES["y_test"]).unlink()
    with pytest.raises(MnistDataError, match="t10k-labels-idx1-ubyte: missing"):
        load_idx_folder(tmp_path)
    (tmp_path / FILES["y_test"]).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")  # says 9, holds 3
    with pytest.raises(MnistDataError, match="t10k-labels-idx1-ubyte: holds 3 data bytes"):
        load_idx_folder(tmp_path)
    (tmp_path / FILES["y_test"]).write_bytes(b"PK\x03\x04")
    with pytest.raises(MnistDataError, match="bad magic"):
        load_idx_folder(tmp_path)
    monkeypatch.delenv("CIRCUITRY_MNIST_DIR", raising=False)
    with pytest.raises(MnistDataError, match="CIRCUITRY_MNIST_DIR"):
        get_task("mnist").make_data(0)


def test_mnist_task_reads_the_environment_folder(tmp_path, monkeypatch):
    write_mnist(tmp_path, compress=True)
    monkeypatch.setenv("CIRCUITRY_MNIST_DIR", str(tmp_path))
    task = get_task("mnist")
    assert task.make_data(0).x_train.shape == (6, 784) and task.input_grid == (28, 28)
