import copy

import pytest
import torch

from circuitry.workers.cost import add_cost_grad, total_cost
from circuitry.workers.transformer import Transformer, TransformerConfig
from circuitry.workers.transformer_bimt import (Sheet, best_position_reference, cost_terms, full_cost,
                                                head_neuron_unit_costs, head_unit_costs, mlp_unit_costs, relocate,
                                                resid_unit_costs, swap_head_neurons, swap_heads, swap_mlp_neurons,
                                                swap_resid)

CONFIGS = {
    "tokens-ln": TransformerConfig(n_layers=2, n_heads=3, d_model=8, d_head=4, d_mlp=10, n_ctx=6, d_vocab=7,
                                   d_input=0, d_output=7, layer_norm=True),
    "linear-input": TransformerConfig(n_layers=2, n_heads=2, d_model=6, d_head=3, d_mlp=12, n_ctx=5, d_vocab=0,
                                      d_input=2, d_output=2, positional=False),
    "attn-only": TransformerConfig(n_layers=2, n_heads=2, d_model=6, d_head=3, d_mlp=0, n_ctx=6, d_vocab=5,
                                   d_input=0, d_output=5),
}


def heavy_tailed(cfg, seed=0):
    torch.manual_seed(seed)
    model = Transformer(cfg).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln" not in name and not name.startswith("ln"):
                p.mul_(torch.rand_like(p) ** 4 * 5)
            else:
                p.add_(torch.randn_like(p) * 0.3)  # LayerNorms that are not the identity
    return model


def inputs(cfg):
    g = torch.Generator().manual_seed(5)
    if cfg.d_vocab:
        return torch.randint(0, cfg.d_vocab, (4, cfg.n_ctx), generator=g)
    return torch.randn(4, cfg.n_ctx, cfg.d_input, generator=g, dtype=torch.float64)


def swap_kinds(model):
    """(name, swap(j, k), number of positions) for every kind of swap of the model."""
    cfg = model.cfg
    kinds = [("resid", lambda j, k: swap_resid(model, j, k), cfg.d_model)]
    for l in range(cfg.n_layers):
        kinds.append((f"heads{l}", lambda j, k, l=l: swap_heads(model, l, j, k), cfg.n_heads))
        for h in range(cfg.n_heads):
            kinds.append((f"head{l}.{h}", lambda j, k, l=l, h=h: swap_head_neurons(model, l, h, j, k), cfg.d_head))
        if cfg.d_mlp:
            kinds.append((f"mlp{l}", lambda j, k, l=l: swap_mlp_neurons(model, l, j, k), cfg.d_mlp))
    return kinds


def unit_costs(model, sheet, name):
    if name == "resid":
        return resid_unit_costs(model, sheet, "mean")
    if name.startswith("heads"):
        return head_unit_costs(model, sheet, int(name[5:]), "mean")
    if name.startswith("head"):
        l, h = map(int, name[4:].split("."))
        return head_neuron_unit_costs(model, sheet, l, h, "mean")
    return mlp_unit_costs(model, sheet, int(name[3:]), "mean")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_swap_kind_keeps_the_function(name):
    cfg = CONFIGS[name]
    model = heavy_tailed(cfg)
    x = inputs(cfg)
    with torch.no_grad():
        before = model(x)
        for kind, swap, n in swap_kinds(model):
            for j, k in [(0, n - 1), (n // 2, 0)]:
                if j == k:
                    continue
                state = copy.deepcopy(model.state_dict())
                swap(j, k)
                changed = any(not torch.equal(state[key], v) for key, v in model.state_dict().items())
                assert changed, f"{kind} swap {j}<->{k} moved nothing"
                assert torch.allclose(model(x), before, rtol=1e-12, atol=1e-12), kind
        sheet = Sheet(model)
        assert relocate(model, sheet, top_k=20) > 0
        assert torch.allclose(model(x), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CONFIGS)
def test_closed_form_delta_equals_full_recompute(name):
    model = heavy_tailed(CONFIGS[name], seed=1)
    sheet = Sheet(model)
    base = full_cost(model, sheet)
    for kind, swap, n in swap_kinds(model):
        M = unit_costs(model, sheet, kind)
        for j in range(n):
            delta = M[j] + M[:, j] - M[j, j] - M.diagonal()
            for k in range(n):
                swap(j, k)
                assert abs(float(full_cost(model, sheet) - base - delta[k])) < 1e-9, (kind, j, k)
                swap(j, k)
            assert int(torch.argmin(delta)) == best_position_reference(model, sheet, swap, j, n)


def test_relocation_lowers_the_cost():
    model = heavy_tailed(CONFIGS["tokens-ln"], seed=2)
    sheet = Sheet(model)
    before = full_cost(model, sheet)
    relocate(model, sheet, top_k=20)
    assert full_cost(model, sheet) < before


@pytest.mark.parametrize("norm,bias,last", [("mean", True, True), ("sum", False, False)])
def test_closed_form_gradient_equals_autograd(norm, bias, last):
    model = heavy_tailed(CONFIGS["tokens-ln"], seed=3)
    sheet = Sheet(model)
    model.zero_grad()
    (0.3 * total_cost(cost_terms(model, sheet, 2.0, 0.5, norm, bias, last))).backward()
    expected = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    add_cost_grad(cost_terms(model, sheet, 2.0, 0.5, norm, bias, last), 0.3)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[n], atol=1e-12), n
    assert expected["blocks.0.ln1.w"].abs().sum() == 0  # LayerNorms are not penalised (the reference)
    assert expected["blocks.0.attn.W_Q"].abs().sum() > 0


def test_mean_cost_is_the_references_per_layer_mean():
    """mean over q, k and v together (the reference's one l_attn linear), per layer."""
    model = heavy_tailed(CONFIGS["linear-input"], seed=4)
    sheet = Sheet(model)
    got = float(total_cost(cost_terms(model, sheet, 2.0, 0.5, "mean")).detach())
    c = model.coordinates()
    d = lambda dst, src: (dst.double()[:, None] - src.double()[None, :]).abs()  # noqa: E731  [out, in] as nn.Linear
    lin = lambda w, b, dist: float(((w.abs() * (2 * dist + 0.5)).mean() + (b.abs() * 0.5).mean()).detach())  # noqa: E731
    e = model.embed
    want = lin(e.W_in.T, e.b_in, d(c["resid"], c["input"]))
    for block in model.blocks:
        a, m = block.attn, block.mlp
        to_rows = lambda W: W.permute(0, 2, 1).reshape(-1, W.shape[1])  # noqa: E731  [h*e, d_model]
        w_attn = torch.cat([to_rows(a.W_Q), to_rows(a.W_K), to_rows(a.W_V)])
        b_attn = torch.cat([a.b_Q.flatten(), a.b_K.flatten(), a.b_V.flatten()])
        want += lin(w_attn, b_attn, d(c["attn"], c["resid"]).repeat(3, 1))
        want += lin(a.W_O.reshape(-1, a.W_O.shape[-1]).T, a.b_O, d(c["resid"], c["attn"]))
        want += lin(m.W_in.T, m.b_in, d(c["mlp"], c["resid"])) + lin(m.W_out.T, m.b_out, d(c["resid"], c["mlp"]))
    want += lin(model.unembed.W_U.T, model.unembed.b_U, d(c["output"], c["resid"]))
    assert abs(got - want) < 1e-9 * abs(want)
