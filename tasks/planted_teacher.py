"""A random sparse teacher MLP whose live edges are the ground-truth circuit.

The teacher is fixed (built from TEACHER_SEED, like a formula is fixed); a seed only changes which
inputs are sampled. It has three independent blocks: output b reads inputs {2b, 2b+1} through
four hidden neurons per layer, with each in-block edge present with probability 0.6 and weights
bounded away from zero, so every live edge matters and every absent edge is exactly zero. Hidden
positions are shuffled so the blocks are not already local in the initial layout.

A student with the same shape is trained on the teacher's outputs. Because hidden neurons of a
student are only defined up to permutation, edge-level agreement for a student is measured after
matching its hidden neurons to the teacher's (workers.evaluate); the teacher's own checkpoint
(`teacher()`) has the edge set exactly, by construction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from circuitry.tasks.base import FRESH_SEED_OFFSET, Data, Task, live_edges
from circuitry.tasks.recipe import SYMBOLIC

SHAPE = (6, 12, 12, 3)
BLOCKS = 3
TEACHER_SEED = 1234
EDGE_PROBABILITY = 0.6
N_TRAIN = N_TEST = 500


def _block_of(layer: int, n: int) -> torch.Tensor:
    """Block id of each neuron (by its feature index before shuffling)."""
    return torch.arange(n) * BLOCKS // n


def _teacher_weights() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(TEACHER_SEED)
    perms = [torch.arange(SHAPE[0])]
    perms += [torch.randperm(n, generator=g) for n in SHAPE[1:-1]]
    perms += [torch.arange(SHAPE[-1])]
    weights, biases = [], []
    for l in range(len(SHAPE) - 1):
        n_in, n_out = SHAPE[l], SHAPE[l + 1]
        same_block = _block_of(l + 1, n_out)[:, None] == _block_of(l, n_in)[None, :]
        live = same_block & (torch.rand(n_out, n_in, generator=g) < EDGE_PROBABILITY)
        # every neuron keeps at least one in-block input so no block is cut
        for j in range(n_out):
            if not live[j].any():
                live[j, torch.nonzero(same_block[j])[0]] = True
        magnitude = 0.6 + 0.9 * torch.rand(n_out, n_in, generator=g)
        sign = torch.where(torch.rand(n_out, n_in, generator=g) < 0.5, -1.0, 1.0)
        w = magnitude * sign * live
        b = 0.1 * torch.randn(n_out, generator=g)
        # place neuron feature f at position p where perm[p] == f
        weights.append(w[perms[l + 1]][:, perms[l]])
        biases.append(b[perms[l + 1]])
    return weights, biases


def teacher() -> dict:
    """The teacher as a `circuitry.mlp/1` checkpoint (docs/formats.md), positions as laid out."""
    weights, biases = _teacher_weights()
    coords = [torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n) for n in SHAPE]
    return {
        "format": "circuitry.mlp/1",
        "task": "planted_teacher",
        "regime": "teacher",
        "seed": TEACHER_SEED,
        "shape": list(SHAPE),
        "activation": "silu",
        "weights": weights,
        "biases": biases,
        "in_perm": torch.arange(SHAPE[0]),
        "out_perm": torch.arange(SHAPE[-1]),
        "coordinates": coords,
        "l0": 0.1,
        "config": {"edge_probability": EDGE_PROBABILITY, "teacher_seed": TEACHER_SEED},
    }


def teacher_edges() -> set[tuple[int, int, int]]:
    """The ground-truth circuit: every (layer, src_pos, dst_pos) with a non-zero teacher weight."""
    return live_edges(_teacher_weights()[0])


def _teacher_forward(x: torch.Tensor) -> torch.Tensor:
    weights, biases = _teacher_weights()
    h = x
    for l, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.T + b
        if l < len(weights) - 1:
            h = F.silu(h)
    return h


def generate(seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N_TRAIN + N_TEST, SHAPE[0], generator=g) * 2 - 1
    y = _teacher_forward(x)
    return Data(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


def fresh(seed: int, n: int):
    x = torch.rand(n, SHAPE[0], generator=torch.Generator().manual_seed(seed + FRESH_SEED_OFFSET)) * 2 - 1
    return x, _teacher_forward(x)


planted_teacher = Task(
    name="planted_teacher",
    kind="regression",
    shape=SHAPE,
    generate=generate,
    fresh=fresh,
    description="3 independent sparse blocks, 6-12-12-3; ground truth = the teacher's live edges",
    dependencies=tuple(frozenset({2 * b, 2 * b + 1}) for b in range(BLOCKS)),
    teacher=teacher,
    recipe=SYMBOLIC,  # no notebook: the symbolic formulas' recipe (a small regression MLP, as they are)
)
