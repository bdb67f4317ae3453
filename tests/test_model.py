import math

import pytest
import torch
import torch.nn.functional as F

from circuitry.workers.model import (CoordMLP, folded_line_coordinates, load_checkpoint, ring_coordinates, save_checkpoint,
                           sheet_coordinates, wire_lengths)


def design_forward(ckpt, x):
    """The forward pass exactly as docs/formats.md states it, from the checkpoint dict alone."""
    h = ckpt["embedding"][x].flatten(1) if "embedding" in ckpt else x
    h = h[:, ckpt["in_perm"]]
    for l, (w, b) in enumerate(zip(ckpt["weights"], ckpt["biases"])):
        h = h @ w.T + b
        if l < len(ckpt["weights"]) - 1:
            h = F.silu(h)
    y = torch.empty_like(h)
    y[:, ckpt["out_perm"]] = h
    return y


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = CoordMLP([4, 6, 3], vocab=5, embed_dim=2)
    with torch.no_grad():
        model.in_perm.copy_(torch.tensor([2, 0, 3, 1]))
        model.out_perm.copy_(torch.tensor([1, 2, 0]))
    ckpt = model.to_checkpoint("modular_addition", "bimt", 3, {"steps": 10})
    save_checkpoint(ckpt, tmp_path / "model.pt")
    raw = torch.load(tmp_path / "model.pt", weights_only=True)  # plain torch, no project code
    assert raw["format"] == "circuitry.mlp/1" and raw["shape"] == [4, 6, 3]
    assert [tuple(w.shape) for w in raw["weights"]] == [(6, 4), (3, 6)]
    x = torch.randint(0, 5, (7, 2))
    with torch.no_grad():
        assert torch.allclose(design_forward(raw, x), model(x), atol=1e-6)
        again = CoordMLP.from_checkpoint(load_checkpoint(tmp_path / "model.pt"))
        assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("norm,last", [("sum", True), ("mean", True), ("mean", False)])
def test_connection_cost_gradient_matches_autograd(norm, last):
    torch.manual_seed(1)
    model = CoordMLP([3, 5, 2], vocab=4, embed_dim=1)
    for weight_factor, bias in [(0.0, False), (1.0, True), (2.0, True)]:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        (0.3 * model.connection_cost(weight_factor, bias, norm, last)).backward()
        expected = [p.grad.clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad.zero_()
        model.add_connection_cost_grad(0.3, weight_factor, bias, norm, last)
        for p, e in zip(model.parameters(), expected):
            assert torch.allclose(p.grad, e, atol=1e-7)


def test_mean_cost_is_the_mnist_notebooks_get_cc():
    """mnist_3.5.ipynb's get_cc(weight_factor=2.0, no_penalize_last=True), written out by hand:
    per layer mean(|W| * (2 * manhattan + l0)) (no wire length on the last layer) + mean(|b|) * l0."""
    torch.manual_seed(3)
    coords = [sheet_coordinates(3, 3), sheet_coordinates(2, 2), sheet_coordinates(1, 3)]
    model = CoordMLP([9, 4, 3], coords, l0=0.5, distance="manhattan").double()
    expected = 0.0
    model.requires_grad_(False)
    for l, lin in enumerate(model.linears):
        dst, src = coords[l + 1].double(), coords[l].double()
        manhattan = (dst[:, None, 0] - src[None, :, 0]).abs() + (dst[:, None, 1] - src[None, :, 1]).abs()
        wf = 2.0 if l == 0 else 0.0
        expected += float((lin.weight.abs() * (wf * manhattan + 0.5)).mean() + lin.bias.abs().mean() * 0.5)
    got = float(model.connection_cost(2.0, True, "mean", last_layer_distance=False))
    assert got == pytest.approx(expected, rel=1e-7)  # the model keeps its wire lengths in float32


def test_ring_and_folded_layouts():
    ring = ring_coordinates(10)
    assert torch.allclose((ring - 0.5).norm(dim=1), torch.full((10,), 0.25))
    assert torch.allclose(ring[0], torch.tensor([0.5 + 0.25 * math.cos(math.pi / 10), 0.5 + 0.25 * math.sin(math.pi / 10)]))
    folded = folded_line_coordinates(6, 2)  # token a's dims 0-2, then token b's at the same places
    assert torch.equal(folded[:3], folded[3:]) and torch.allclose(folded[:3], torch.tensor([1 / 6, 0.5, 5 / 6]))


def test_sheet_distances_are_euclidean_or_manhattan():
    c = sheet_coordinates(2, 2)
    d = wire_lengths(c, c)
    assert torch.allclose(d[0, 3], torch.tensor(2**0.5 / 2))
    assert torch.allclose(d[0, 1], torch.tensor(0.5))
    assert torch.allclose(wire_lengths(c, c, "manhattan")[0, 3], torch.tensor(1.0))
