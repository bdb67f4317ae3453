import torch
import torch.nn.functional as F

from workers.model import CoordMLP, load_checkpoint, save_checkpoint, sheet_coordinates, wire_lengths


def design_forward(ckpt, x):
    """The forward pass exactly as design.md states it, from the checkpoint dict alone."""
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


def test_connection_cost_gradient_matches_autograd():
    torch.manual_seed(1)
    model = CoordMLP([3, 5, 2], vocab=4, embed_dim=1)
    for weight_factor, bias in [(0.0, False), (1.0, True)]:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        (0.3 * model.connection_cost(weight_factor, bias)).backward()
        expected = [p.grad.clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad.zero_()
        model.add_connection_cost_grad(0.3, weight_factor, bias)
        for p, e in zip(model.parameters(), expected):
            assert torch.allclose(p.grad, e, atol=1e-6)


def test_sheet_distances_are_euclidean():
    c = sheet_coordinates(2, 2)
    d = wire_lengths(c, c)
    assert torch.allclose(d[0, 3], torch.tensor(2**0.5 / 2))
    assert torch.allclose(d[0, 1], torch.tensor(0.5))
