import math

import pytest
import torch

from circuitry.tasks import TASKS, get_task, teacher_edges
from circuitry.workers.model import CoordMLP


@pytest.mark.parametrize("name", [n for n in TASKS if n != "mnist"])  # mnist needs files: test_mnist.py
def test_data_is_seeded_and_shaped(name):
    task = get_task(name)
    a, b, c = task.make_data(0), task.make_data(0), task.make_data(1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    if task.transformer is not None:  # sequences: [N, pos] ids or [N, pos, d_input]; targets at the scored positions
        cfg = task.transformer
        assert a.x_train.shape[1] <= cfg.n_ctx and max(task.positions) < a.x_train.shape[1]
        assert a.y_train.shape[1] == len(task.positions)
        if task.kind == "classification":
            assert a.y_train.dtype == torch.long and int(a.y_train.max()) < cfg.d_output
        else:
            assert a.x_train.shape[2:] in ((), (cfg.d_input,)) and a.y_train.shape[2] <= cfg.d_output
        return
    n_features = task.shape[0] // task.embed_dim if task.embed_dim else task.shape[0]
    assert a.x_train.shape[1] == n_features
    if task.kind == "regression":
        assert a.y_train.shape[1] == task.shape[-1]
    else:
        assert a.y_train.dtype == torch.long and int(a.y_train.max()) < task.shape[-1]


def test_corruption_pairs_every_example_with_another():
    task = get_task("independence")
    x = task.make_data(0).x_test
    xc = task.corrupt(x, seed=3)
    assert torch.equal(torch.sort(xc, 0).values, torch.sort(x, 0).values)  # a permutation
    assert not (xc == x).all(1).any()  # no example paired with itself
    assert torch.equal(xc, task.corrupt(x, seed=3))


def test_symbolic_formulas_and_dependencies():
    task = get_task("independence")
    d = task.make_data(0)
    x1, x2, x3, x4 = d.x_train[0]
    assert torch.allclose(d.y_train[0], torch.tensor([(x1 + x3) ** 3, x2**2 + math.sin(math.pi * x4)]))
    assert task.dependencies == (frozenset({0, 2}), frozenset({1, 3}))
    fs = get_task("feature_sharing").make_data(0)
    assert torch.allclose(fs.y_train[:, 2], (fs.x_train**2).sum(1))


def test_planted_teacher_checkpoint_is_its_data_and_its_edges():
    task = get_task("planted_teacher")
    ckpt = task.teacher()
    data = task.make_data(0)
    model = CoordMLP.from_checkpoint(ckpt)
    with torch.no_grad():
        assert torch.allclose(model(data.x_test), data.y_test, atol=1e-5)
    edges = teacher_edges()
    nonzero = sum(int((w != 0).sum()) for w in ckpt["weights"])
    assert len(edges) == nonzero > 0
    # blocks are independent: each output depends only on its two inputs
    for k, deps in enumerate(task.dependencies):
        x = data.x_test.clone()
        others = [i for i in range(6) if i not in deps]
        x[:, others] = 0.3
        with torch.no_grad():
            assert torch.allclose(model(x)[:, k], data.y_test[:, k], atol=1e-5)
