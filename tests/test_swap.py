import copy

import pytest
import torch

from circuitry.workers.model import CoordMLP, folded_line_coordinates, line_coordinates, sheet_coordinates
from circuitry.workers.swap import (
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


def folded(seed=0):
    """A modular-addition-like net: 2 tokens x 3 embedding dims folded onto 3 input positions."""
    torch.manual_seed(seed)
    model = CoordMLP([6, 7, 5], [folded_line_coordinates(6, 2), line_coordinates(7), line_coordinates(5)], in_fold=2)
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(torch.rand_like(lin.weight) ** 4 * 5)
    return model


@pytest.mark.parametrize("make", [lambda: heavy_tailed([4, 7, 5, 2]), lambda: heavy_tailed([6, 8, 3], SHEETS), folded],
                         ids=["1-D", "2-D", "folded"])
def test_mean_normalised_delta_equals_full_recompute(make):
    """modular_addition_3.3 / mnist_3.5 relocate by the per-layer *mean* cost: each layer's
    change counts 1 / (its number of weights); folded input positions move their neurons together."""
    model = make()
    x = torch.randn(5, model.shape[0])
    base = full_cost(model, "mean")
    for layer in range(len(model.shape)):
        n = model.shape[0] // model.in_fold if layer == 0 else model.shape[layer]
        for j in range(n):
            delta = swap_cost_deltas(model, layer, j, "mean")
            for k in range(n):
                with torch.no_grad():
                    before = model(x)
                    swap_neurons(model, layer, j, k)
                    assert (model(x) - before).abs().max() < 1e-5
                assert abs(float(full_cost(model, "mean") - base - delta[k])) < 1e-12
                swap_neurons(model, layer, j, k)
            assert int(torch.argmin(delta)) == best_position_reference(model, layer, j, "mean")


def test_folded_inputs_move_in_pairs_and_inputs_can_stay_put():
    model = folded(seed=1)
    relocate(model, top_k=3, norm="mean")
    perm = model.in_perm
    assert torch.equal(perm[3:], perm[:3] + 3) and not torch.equal(perm, torch.arange(6))
    still = heavy_tailed([4, 20, 20, 2], seed=5)
    assert relocate(still, top_k=5, swap_inputs=False) > 0 and torch.equal(still.in_perm, torch.arange(4))


def test_relocate_matches_the_reference_port():
    model = heavy_tailed([4, 20, 20, 2], seed=5)
    reference = copy.deepcopy(model)
    moved = relocate(model, top_k=5)
    assert moved == relocate_reference(reference, top_k=5) > 0
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    assert full_cost(model) < full_cost(heavy_tailed([4, 20, 20, 2], seed=5))
