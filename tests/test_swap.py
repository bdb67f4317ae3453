import copy

import pytest
import torch

from workers.model import CoordMLP, sheet_coordinates
from workers.swap import (
    best_position_reference,
    full_cost,
    relocate,
    relocate_reference,
    swap_cost_deltas,
    swap_neurons,
    top_neurons,
)


def heavy_tailed(shape, coordinates=None, seed=0):
    torch.manual_seed(seed)
    model = CoordMLP(shape, coordinates)
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(torch.rand_like(lin.weight) ** 4 * 5)
    return model


SHEETS = [sheet_coordinates(2, 3), sheet_coordinates(2, 4), sheet_coordinates(1, 3)]


@pytest.mark.parametrize("shape,coords", [([4, 7, 5, 2], None), ([6, 8, 3], SHEETS)], ids=["1-D", "2-D"])
def test_closed_form_delta_equals_full_recompute(shape, coords):
    model = heavy_tailed(shape, coords)
    base = full_cost(model)
    for layer, n in enumerate(shape):
        for j in range(n):
            delta = swap_cost_deltas(model, layer, j)
            for k in range(n):
                swap_neurons(model, layer, j, k)
                assert abs(float(full_cost(model) - base - delta[k])) < 1e-9
                swap_neurons(model, layer, j, k)
            assert int(torch.argmin(delta)) == best_position_reference(model, layer, j)


@pytest.mark.parametrize("coords", [None, [sheet_coordinates(3, 3), sheet_coordinates(2, 5), sheet_coordinates(1, 2)]])
def test_every_swap_keeps_the_function(coords):
    model = heavy_tailed([9, 10, 2], coords, seed=2)
    x = torch.randn(32, 9)
    with torch.no_grad():
        for layer in range(3):
            for j in top_neurons(model, layer, 5):
                before = model(x)
                k = int(torch.argmin(swap_cost_deltas(model, layer, j)))
                swap_neurons(model, layer, j, k)
                assert (model(x) - before).abs().max() < 1e-6


def test_relocate_matches_the_reference_port():
    model = heavy_tailed([4, 20, 20, 2], seed=5)
    reference = copy.deepcopy(model)
    moved = relocate(model, top_k=5)
    assert moved == relocate_reference(reference, top_k=5) > 0
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    assert full_cost(model) < full_cost(heavy_tailed([4, 20, 20, 2], seed=5))
