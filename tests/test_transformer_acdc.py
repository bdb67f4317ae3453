"""The head-level transformer graph (EAP-IG's names and order), its patched forward, and ACDC /
exact scores equal to their one-forward-per-candidate definitions on small random models."""
import math

import pytest
import torch

from circuitry.workers.acdc import transformer as ta
from circuitry.workers.transformer_graph import TransformerGraph, TransformerProblem, Weights


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread (two threads on a shared 2-core VM mostly wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def eap_ig_edge_names(n_layers, n_heads, mlp=True):
    """EAP-IG's Graph.from_model edge insertion order (parallel_attn_mlp=False), re-derived."""
    names, stream = [], ["input"]
    for l in range(n_layers):
        heads = [f"a{l}.h{h}" for h in range(n_heads)]
        for node in stream:
            for head in heads:
                for letter in "qkv":
                    names.append(f"{node}->{head}<{letter}>")
        stream += heads
        if mlp:
            names += [f"{node}->m{l}" for node in stream]
            stream.append(f"m{l}")
    return names + [f"{node}->logits" for node in stream]


def test_graph_names_and_order_match_eap_ig():
    g = TransformerGraph(Weights.random(2, 4, 16, 4, 32))
    assert g.n_edges == 110
    s, r = g.edge_names()
    assert [f"{a}->{b}" for a, b in zip(s, r)] == eap_ig_edge_names(2, 4)
    g0 = TransformerGraph(Weights.random(2, 3, 12, 4, 0))
    s, r = g0.edge_names()
    assert [f"{a}->{b}" for a, b in zip(s, r)] == eap_ig_edge_names(2, 3, mlp=False)


def plain_forward(w: Weights, tokens):
    """A residual-stream transformer written out independently of the graph."""
    def ln(x, a, b):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * a + b
    P = tokens.shape[1]
    x = w.W_E[tokens] + w.W_pos[:P]
    for l in range(w.n_layers):
        h = ln(x, w.ln1_w[l], w.ln1_b[l]) if w.layer_norm else x
        q = torch.einsum("npd,hde->nhpe", h, w.W_Q[l]) + w.b_Q[l][:, None]
        k = torch.einsum("npd,hde->nhpe", h, w.W_K[l]) + w.b_K[l][:, None]
        v = torch.einsum("npd,hde->nhpe", h, w.W_V[l]) + w.b_V[l][:, None]
        att = (q @ k.transpose(-1, -2)) / math.sqrt(w.d_head)
        att = att.masked_fill(~torch.ones(P, P, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        x = x + torch.einsum("nhpe,hed->npd", att @ v, w.W_O[l]) + w.b_O[l]
        if w.has_mlp:
            h = ln(x, w.ln2_w[l], w.ln2_b[l]) if w.layer_norm else x
            x = x + torch.nn.functional.gelu(h @ w.mlp_W_in[l] + w.mlp_b_in[l]) @ w.mlp_W_out[l] + w.mlp_b_out[l]
    if w.layer_norm:
        x = ln(x, w.lnf_w, w.lnf_b)
    return x @ w.W_U + w.b_U


@pytest.mark.parametrize("ln,d_mlp", [(False, 24), (True, 24), (False, 0)])
def test_full_forward_is_the_residual_stream(ln, d_mlp):
    w = Weights.random(2, 3, 12, 4, d_mlp, layer_norm=ln, seed=1)
    g = TransformerGraph(w)
    x = torch.randint(0, 10, (4, 7))
    _, y = g.forward(g.embed(x))
    torch.testing.assert_close(y, plain_forward(w, x), rtol=1e-12, atol=1e-12)
    # the full mask with any ablated values is the full model
    abl = torch.randn(len(g.senders), 4, 7, 12, dtype=torch.float64)
    torch.testing.assert_close(g.forward(g.embed(x), g.full_mask(), abl)[1], y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ln,d_mlp,d_vocab", [(False, 16, 7), (True, 16, 7), (False, 0, 0)])
def test_weights_from_model_reproduce_its_forward(ln, d_mlp, d_vocab):
    from circuitry.workers.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=d_mlp, n_ctx=6, d_vocab=d_vocab,
                            d_input=0 if d_vocab else 3, d_output=5, layer_norm=ln)
    model = Transformer(cfg).double()
    x = torch.randint(0, 7, (3, 6)) if d_vocab else torch.randn(3, 6, 3, dtype=torch.float64)
    g = TransformerGraph(Weights.from_model(model))
    with torch.no_grad():
        torch.testing.assert_close(g.forward(g.embed(x))[1], model(x), rtol=1e-10, atol=1e-10)


def test_removing_an_edge_patches_that_receiver_only():
    w = Weights.random(2, 2, 8, 4, 16, seed=2)
    g = TransformerGraph(w)
    x, xc = torch.randint(0, 10, (3, 6)), torch.randint(0, 10, (3, 6))
    p = TransformerProblem.build(g, x, xc, "kl", torch.arange(3, 6))
    mask = g.full_mask()
    r, s = g.receiver_index("a1.h0<k>"), g.sender_index("a0.h1")
    mask[r, s] = False
    # by hand (senders input, a0.h0, a0.h1, m0): head a1.h0's key input sees a0.h1's corrupted output, every other input the clean one
    outs, y = g.forward(p.x0, mask, p.ablated)
    q_in = p.clean[:4].sum(0) + w.b_O[0]
    k_in = q_in - p.clean[s] + p.ablated[s]
    head = g.heads(1, q_in[None], k_in[None], q_in[None], [0])[0]
    torch.testing.assert_close(outs[g.sender_index("a1.h0")], head, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[g.sender_index("a1.h1")], p.clean[g.sender_index("a1.h1")], rtol=1e-12, atol=1e-12)


def _problem(metric, ablation, ln=False, d_mlp=16, seed=0, N=4, P=5, d_output=None):
    w = Weights.random(2, 3, 8, 4, d_mlp, layer_norm=ln, seed=seed, d_output=d_output, scale=2.0)
    g = TransformerGraph(w)
    gen = torch.Generator().manual_seed(seed)
    x, xc = torch.randint(0, 10, (N, P), generator=gen), torch.randint(0, 10, (N, P), generator=gen)
    extra = {}
    if metric == "logit_diff":
        extra = dict(correct=torch.randint(0, 10, (N, 2), generator=gen), incorrect=torch.randint(0, 10, (N, 2), generator=gen))
    return TransformerProblem.build(g, x, xc, metric, torch.tensor([P - 2, P - 1]), ablation, **extra)


def _close(a, b):
    """Equal up to float64 rounding of the metric (the two compute it in different orders)."""
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * max(1.0, float(b.abs().max())))


def _mixed_tau(p):
    """A tau at which ACDC keeps some edges and removes others (picked with the fast ACDC; the
    comparison with the definition below does not depend on how tau was found)."""
    s, _ = ta.exact_scores(p)
    vals = p.graph.flat(s).abs()
    for q in (0.5, 0.3, 0.15, 0.05, 0.01):
        tau = float(vals[vals > 0].quantile(q))
        kept = int((ta.acdc(p, tau).mask & p.graph.real).sum())
        if 0 < kept < p.graph.n_edges:
            return tau
    raise AssertionError("no tau gives a mixed circuit")


@pytest.mark.parametrize("metric", ["kl", "logit_diff", "mse"])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_acdc_equals_the_sequential_definition(metric, ablation):
    p = _problem(metric, ablation, seed=3)
    tau = _mixed_tau(p)
    ref = ta.acdc_naive(p, tau)
    fast = ta.acdc(p, tau, max_rows=5)  # small batches: several speculative rounds a receiver
    kept = int(ref.mask[p.graph.real].sum())
    assert 0 < kept < p.graph.n_edges
    assert torch.equal(fast.mask & p.graph.real, ref.mask & p.graph.real)
    _close(fast.scores, ref.scores)
    assert fast.edges_tested == ref.edges_tested == p.graph.n_edges


@pytest.mark.parametrize("ln,d_mlp", [(True, 16), (False, 0)])
def test_acdc_equals_the_definition_with_layernorm_and_attention_only(ln, d_mlp):
    p = _problem("kl", "resample", ln=ln, d_mlp=d_mlp, seed=4)
    tau = _mixed_tau(p)
    ref, fast = ta.acdc_naive(p, tau), ta.acdc(p, tau)
    assert torch.equal(fast.mask & p.graph.real, ref.mask & p.graph.real)
    _close(fast.scores, ref.scores)


@pytest.mark.parametrize("metric", ["kl", "mse"])
def test_exact_scores_equal_one_forward_per_edge(metric):
    p = _problem(metric, "resample", seed=5, d_output=7 if metric == "mse" else None)
    fast, _ = ta.exact_scores(p, max_rows=4)
    _close(fast, ta.exact_naive(p))


def test_tau_zero_and_huge_tau_extremes():
    p = _problem("kl", "resample", seed=6)
    huge = ta.acdc(p, 1e9)
    assert not bool((huge.mask & p.graph.real).any())
    assert torch.equal(ta.acdc(p, 0.0).mask & p.graph.real, ta.acdc_naive(p, 0.0).mask & p.graph.real)


@pytest.mark.parametrize("metric", ["kl", "logit_diff", "mse"])
def test_eap_scores_are_the_derivative_of_r_along_each_edge(metric):
    from circuitry.workers.transformer_attribution import attribution_scores, restoration_metric

    p = _problem(metric, "resample", seed=7, d_output=7 if metric == "mse" else None)
    scores, _ = attribution_scores(p, "eap")
    r, g, eps = restoration_metric(p), p.graph, 1e-6
    for rr, s in g.edge_pairs[::9].tolist():  # a spread of edges: head q/k/v, mlp and logits receivers
        def r_at(t):
            m = g.real.to(torch.float64)
            m[rr, s] = 1 - t  # the edge's contribution moved a fraction t toward its ablated value
            return float(r(g.forward(p.x0, m, p.ablated)[1]))
        fd = (r_at(eps) - r_at(-eps)) / (2 * eps)
        assert scores[rr, s] == pytest.approx(fd, rel=1e-4, abs=1e-8)
    assert torch.equal(scores != 0, g.real & (scores != 0))


def test_eap_ig_with_one_step_is_eap_at_the_ablated_input():
    from circuitry.workers.transformer_attribution import attribution_scores

    p = _problem("kl", "zero", seed=8)
    ig, _ = attribution_scores(p, "eap-ig", steps=5)
    eap, _ = attribution_scores(p, "eap")
    assert ig.shape == eap.shape and not torch.allclose(ig, eap)
    # the path's mean gradient: equal to EAP's when the path collapses to the clean input
    p.ablated[0] = p.x0
    ig1, _ = attribution_scores(p, "eap-ig", steps=5)
    torch.testing.assert_close(ig1, attribution_scores(p, "eap")[0], rtol=1e-10, atol=1e-12)
