"""`--export transformer-lens`: HookedTransformer (transformer-lens 3.9) loads the exported model with
circuitry's outputs, and EAP scores computed with TransformerLens hooks on it equal circuitry's.
Skips, with the reason, where transformer-lens is not installed (`pip install circuitry[lens]`)."""
import pytest
import torch

from circuitry.workers.transformer import Transformer, TransformerConfig
from circuitry.workers.transformer_lens_export import ExportError, transformer_lens_config, transformer_lens_state


def _model(d_mlp=16, layer_norm=True, seed=0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=d_mlp, n_ctx=6, d_vocab=7,
                            d_input=0, d_output=7, layer_norm=layer_norm)
    return Transformer(cfg)


def test_export_needs_token_inputs():
    cfg = {"n_layers": 1, "n_heads": 1, "d_model": 4, "d_head": 4, "d_mlp": 0, "n_ctx": 4, "d_vocab": 0,
           "d_input": 2, "d_output": 2}
    with pytest.raises(ExportError, match="token ids"):
        transformer_lens_config(cfg)
    state = transformer_lens_state(_model().to_checkpoint("induction", "vanilla", 0, {}))
    assert state["cfg"]["normalization_type"] == "LN" and state["cfg"]["d_mlp"] == 16
    assert "blocks.1.attn.W_Q" in state["state_dict"]


def _hooked(model):
    tl = pytest.importorskip("transformer_lens", reason="transformer-lens is not installed (pip install circuitry[lens])")
    d = transformer_lens_state(model.to_checkpoint("induction", "vanilla", 0, {}))
    ht = tl.HookedTransformer(tl.HookedTransformerConfig(**d["cfg"], dtype=torch.float64))
    ht.load_state_dict({k: v.double() for k, v in d["state_dict"].items()}, strict=False)
    return ht


@pytest.mark.parametrize("d_mlp,layer_norm", [(16, True), (0, False)])
def test_hooked_transformer_reproduces_outputs(d_mlp, layer_norm):
    model = _model(d_mlp, layer_norm).double()
    ht = _hooked(model)
    x = torch.randint(0, 7, (3, 6))
    with torch.no_grad():
        torch.testing.assert_close(ht(x), model(x), rtol=1e-10, atol=1e-10)


def test_eap_with_transformer_lens_hooks_equals_circuitry():
    from circuitry.workers.transformer_attribution import attribution_scores, restoration_metric
    from circuitry.workers.transformer_graph import TransformerGraph, TransformerProblem, Weights

    model = _model(16, True, seed=1).double()
    ht = _hooked(model)
    ht.set_use_split_qkv_input(True)
    ht.set_use_attn_result(True)
    ht.set_use_hook_mlp_in(True)
    gen = torch.Generator().manual_seed(0)
    x, xc = torch.randint(0, 7, (5, 6), generator=gen), torch.randint(0, 7, (5, 6), generator=gen)
    g = TransformerGraph(Weights.from_model(model))
    p = TransformerProblem.build(g, x, xc, "kl", torch.tensor([3, 4, 5]))
    ours, _ = attribution_scores(p, "eap")
    L, H = 2, 2

    def senders(tokens):  # each sender's output, TransformerLens hooks, [S, N, P, D]
        _, cache = ht.run_with_cache(tokens)
        out = [cache["hook_embed"] + cache["hook_pos_embed"]]
        for l in range(L):
            out += [cache[f"blocks.{l}.attn.hook_result"][:, :, h] for h in range(H)]
            out.append(cache[f"blocks.{l}.hook_mlp_out"])
        return torch.stack(out)

    diff = senders(xc) - senders(x)
    store = {}

    def keep(act, hook):
        act.retain_grad()
        store[hook.name] = act
        return act

    names = [f"blocks.{l}.hook_{w}_input" for l in range(L) for w in "qkv"] + [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    names.append(f"blocks.{L - 1}.hook_resid_post")
    r = restoration_metric(p)
    with torch.enable_grad():
        y = ht.run_with_hooks(x, fwd_hooks=[(n, keep) for n in names])
        r(y).backward()
    theirs = torch.zeros_like(ours)
    for rr, name in enumerate(g.receivers):
        if name == "logits":
            grad = store[f"blocks.{L - 1}.hook_resid_post"].grad
        elif name[0] == "m":
            grad = store[f"blocks.{name[1:]}.hook_mlp_in"].grad
        else:
            l, h = (int(t[1:]) for t in name.split("<")[0].split("."))
            grad = store[f"blocks.{l}.hook_{name[-2]}_input"].grad[:, :, h]
        for s in range(g.n_senders[rr]):
            theirs[rr, s] = (diff[s] * grad).sum()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-12 * float(theirs.abs().max()))
