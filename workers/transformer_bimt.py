"""BIMT on a transformer: the connection cost and the neuron swaps of KindXiaoming/BIMT's
`incontext_3.4.ipynb` (BioTransformer), on workers.transformer's TransformerLens layouts.

The cost. BIMT's layers of weights, bottom up, each joining two neuron layers (workers.transformer
lists them): the input map (W_E, or W_in + b_in), then per block q/k/v (W_Q, W_K, W_V together,
the reference's one `l_attn` linear with out_fold=3), the output projection W_O, the MLP's W_in and
W_out, and the unembedding W_U. Each costs

    agg(|W| * (distance_weight * wire length + l0)) + agg(|b|) * l0,   agg = sum or mean over the layer

(the reference: mean, distance weight 2, l0 0.5). W_pos, which the reference's model lacks, costs
agg(|W_pos|) * l0 (as the MLP's token embedding: it has no wire length). LayerNorm weights are not
penalised (as the reference). The gradient is added in closed form (workers.cost).

The swaps, each of which leaves the function exactly as it was:
  - the residual stream: one permutation of d_model shared by every residual-stream layer (the
    input map's outputs, every block's q/k/v inputs and W_O outputs, the MLPs' inputs and outputs,
    the LayerNorms, the unembedding's inputs): LayerNorm and sums are permutation-equivariant;
  - whole heads as blocks (a head's q/k/v columns, biases and W_O rows move together): attention
    sums over heads;
  - neurons within a head: neuron i's q, k and v columns (they share a coordinate) and W_O row i
    move together: q.k and z @ W_O are sums over the head's neurons;
  - MLP neurons: W_in column, b_in entry, W_out row.
The token inputs and the outputs stay in place (they are named: token ids, vocabulary logits,
regression dims), where the reference also swaps its 2 inputs and 2 outputs.

Which neurons move (the reference's `relocate`): layers from the top down (each block's MLP, then
its attention: first whole heads, then neurons within each head), the residual stream last; in a
layer, the top_k units by incident |W| (q/k/v averaged, as the reference's out_fold mean) each move
to the position of least cost, swapping with the unit there. The reference recomputes the whole
cost for every candidate; a swap changes only the two units' weights, so with
M[u, p] = the wire cost of unit u's weights were it at position p,

    delta(k) = M[j, k] + M[k, j] - M[j, j] - M[k, k]

(l0 and bias terms cancel), and a swap exchanges two rows of M. `full_cost` and
`best_position_reference` are the recompute, kept for tests.
"""
from __future__ import annotations

import torch

from circuitry.workers.cost import CostTerm
from circuitry.workers.transformer import Transformer, coordinates


def _dist(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """|dst[j] - src[i]| as [n_src, n_dst]: the layout of x @ W weights (TransformerLens's)."""
    return (dst[None, :] - src[:, None]).abs()


class Sheet:
    """The wire length of every weight, in each weight's own layout, built once per model."""

    def __init__(self, model: Transformer):
        cfg = model.cfg
        c = {k: v.double() for k, v in coordinates(cfg).items()}
        h, e = cfg.n_heads, cfg.d_head
        self.input = _dist(c["resid"], c["input"])  # [d_in, d_model]
        attn = _dist(c["attn"], c["resid"])  # [d_model, h * e]
        self.qkv = attn.reshape(cfg.d_model, h, e).permute(1, 0, 2).contiguous()  # [h, d_model, e]
        self.out = self.qkv.transpose(1, 2).contiguous()  # [h, e, d_model]
        self.mlp_in = _dist(c["mlp"], c["resid"])  # [d_model, d_mlp]
        self.mlp_out = self.mlp_in.T.contiguous()
        self.unembed = _dist(c["output"], c["resid"])  # [d_model, d_output]
        self.coords = c

    def to(self, device, dtype) -> "Sheet":
        for name in ("input", "qkv", "out", "mlp_in", "mlp_out", "unembed"):
            setattr(self, name, getattr(self, name).to(device=device, dtype=dtype))
        return self


def weight_layers(model: Transformer, sheet: Sheet, last_layer_distance: bool = True):
    """(weights, wire length, biases) for every layer of weights, bottom up; wire length None for
    W_pos (l0 only)."""
    emb = model.embed
    if model.cfg.d_vocab:
        yield [emb.W_E], sheet.input, []
    else:
        yield [emb.W_in], sheet.input, [emb.b_in]
    if model.pos_embed is not None:
        yield [model.pos_embed.W_pos], None, []
    for block in model.blocks:
        a = block.attn
        yield [a.W_Q, a.W_K, a.W_V], sheet.qkv, [a.b_Q, a.b_K, a.b_V]
        yield [a.W_O], sheet.out, [a.b_O]
        if block.mlp is not None:
            yield [block.mlp.W_in], sheet.mlp_in, [block.mlp.b_in]
            yield [block.mlp.W_out], sheet.mlp_out, [block.mlp.b_out]
    yield [model.unembed.W_U], sheet.unembed if last_layer_distance else None, [model.unembed.b_U]


def cost_terms(model: Transformer, sheet: Sheet, weight_factor: float, l0: float, norm: str = "mean",
               penalize_bias: bool = True, last_layer_distance: bool = True) -> list[CostTerm]:
    """The connection cost's terms (workers.cost): per layer of weights, agg over the layer's
    weights (q, k and v together) of |W| * (weight_factor * wire length + l0), + agg(|b|) * l0."""
    if norm not in ("sum", "mean"):
        raise ValueError(f"cost norm {norm!r} is not sum or mean")
    terms = []
    for weights, dist, biases in weight_layers(model, sheet, last_layer_distance):
        n_w = sum(w.numel() for w in weights) if norm == "mean" else 1
        factor = l0 + weight_factor * dist if (dist is not None and weight_factor) else l0
        terms += [CostTerm(w, factor, 1.0 / n_w) for w in weights]
        if penalize_bias and biases:
            n_b = sum(b.numel() for b in biases) if norm == "mean" else 1
            terms += [CostTerm(b, l0, 1.0 / n_b) for b in biases]
    return terms


# ---- swaps: each exchanges two units' weights; the function is unchanged ----

def _swap(t: torch.Tensor, dim: int, a, b) -> None:
    """Exchange index (lists) a and b of tensor t along dim, in place."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    idx, rev = torch.cat([a, b]).to(t.device), torch.cat([b, a]).to(t.device)
    t.data.index_copy_(dim, idx, t.data.index_select(dim, rev))


@torch.no_grad()
def swap_resid(model: Transformer, j: int, k: int) -> None:
    """Exchange residual-stream neurons j and k in every residual-stream layer."""
    emb = model.embed
    if model.cfg.d_vocab:
        _swap(emb.W_E, 1, [j], [k])
    else:
        _swap(emb.W_in, 1, [j], [k])
        _swap(emb.b_in, 0, [j], [k])
    if model.pos_embed is not None:
        _swap(model.pos_embed.W_pos, 1, [j], [k])
    lns = [model.ln_final] + [ln for b in model.blocks for ln in (b.ln1, b.ln2)]
    for ln in lns:
        if ln is not None:
            _swap(ln.w, 0, [j], [k])
            _swap(ln.b, 0, [j], [k])
    for block in model.blocks:
        a = block.attn
        for w in (a.W_Q, a.W_K, a.W_V):
            _swap(w, 1, [j], [k])
        _swap(a.W_O, 2, [j], [k])
        _swap(a.b_O, 0, [j], [k])
        if block.mlp is not None:
            _swap(block.mlp.W_in, 0, [j], [k])
            _swap(block.mlp.W_out, 1, [j], [k])
            _swap(block.mlp.b_out, 0, [j], [k])
    _swap(model.unembed.W_U, 0, [j], [k])


@torch.no_grad()
def swap_heads(model: Transformer, layer: int, h1: int, h2: int) -> None:
    a = model.blocks[layer].attn
    for t in (a.W_Q, a.W_K, a.W_V, a.b_Q, a.b_K, a.b_V, a.W_O):
        _swap(t, 0, [h1], [h2])


@torch.no_grad()
def swap_head_neurons(model: Transformer, layer: int, head: int, i: int, j: int) -> None:
    """Exchange neurons i and j of one head: their q, k, v columns and biases, and W_O rows."""
    a = model.blocks[layer].attn
    for w in (a.W_Q, a.W_K, a.W_V):
        _swap(w[head], 1, [i], [j])
    for b in (a.b_Q, a.b_K, a.b_V):
        _swap(b[head], 0, [i], [j])
    _swap(a.W_O[head], 0, [i], [j])


@torch.no_grad()
def swap_mlp_neurons(model: Transformer, layer: int, i: int, j: int) -> None:
    m = model.blocks[layer].mlp
    _swap(m.W_in, 1, [i], [j])
    _swap(m.b_in, 0, [i], [j])
    _swap(m.W_out, 0, [i], [j])


# ---- M[u, p]: the wire cost of unit u's weights at position p ----

def _layer_scale(weights: list[torch.Tensor], norm: str) -> float:
    return 1.0 / sum(w.numel() for w in weights) if norm == "mean" else 1.0


def _abs64(*ws: torch.Tensor) -> torch.Tensor:
    return sum(w.detach().abs().double().cpu() for w in ws)


def _unit_costs(parts) -> torch.Tensor:
    """M[u, p] = sum over parts of scale * sum_{i,o} A[u, i, o] * D[p, i, o]: A is |W| of unit u
    (its unit_size neurons x their other ends), D the wire lengths were the unit at position p."""
    return sum(s * torch.einsum("uio,pio->up", A, D) for A, D, s in parts)


def resid_unit_costs(model: Transformer, sheet: Sheet, norm: str) -> torch.Tensor:
    c = sheet.coords
    parts = []

    def add(A, other, s):  # A: [d_model, n_other] |W| of every residual neuron
        parts.append((A[:, None], (c["resid"][:, None] - other[None, :]).abs()[:, None], s))

    emb = model.embed
    W_in = emb.W_E if model.cfg.d_vocab else emb.W_in
    add(_abs64(W_in).T, c["input"], _layer_scale([W_in], norm))
    for block in model.blocks:
        a = block.attn
        qkv = _abs64(a.W_Q, a.W_K, a.W_V).permute(1, 0, 2).reshape(model.cfg.d_model, -1)
        add(qkv, c["attn"], _layer_scale([a.W_Q, a.W_K, a.W_V], norm))
        add(_abs64(a.W_O).permute(2, 0, 1).reshape(model.cfg.d_model, -1), c["attn"], _layer_scale([a.W_O], norm))
        if block.mlp is not None:
            m = block.mlp
            add(_abs64(m.W_in), c["mlp"], _layer_scale([m.W_in], norm))
            add(_abs64(m.W_out).T, c["mlp"], _layer_scale([m.W_out], norm))
    add(_abs64(model.unembed.W_U), c["output"], _layer_scale([model.unembed.W_U], norm))
    return _unit_costs(parts)


def _head_abs(model: Transformer, layer: int):
    """(|W_Q| + |W_K| + |W_V| as [h, e, d_model], |W_O| [h, e, d_model], their layer scales' inputs)."""
    a = model.blocks[layer].attn
    return _abs64(a.W_Q, a.W_K, a.W_V).transpose(1, 2), _abs64(a.W_O), a


def head_unit_costs(model: Transformer, sheet: Sheet, layer: int, norm: str) -> torch.Tensor:
    """Units = heads, positions = head blocks: [n_heads, n_heads]."""
    qkv, out, a = _head_abs(model, layer)
    D = sheet.out.double().cpu()  # [h, e, d_model]: wire lengths of the neurons of head block p
    return _unit_costs([(qkv, D, _layer_scale([a.W_Q, a.W_K, a.W_V], norm)), (out, D, _layer_scale([a.W_O], norm))])


def head_neuron_unit_costs(model: Transformer, sheet: Sheet, layer: int, head: int, norm: str) -> torch.Tensor:
    """Units = one head's neurons, positions = that head's positions: [d_head, d_head]."""
    qkv, out, a = _head_abs(model, layer)
    D = sheet.out.double().cpu()[head][:, None]  # [e, 1, d_model]
    return _unit_costs([(qkv[head][:, None], D, _layer_scale([a.W_Q, a.W_K, a.W_V], norm)),
                        (out[head][:, None], D, _layer_scale([a.W_O], norm))])


def mlp_unit_costs(model: Transformer, sheet: Sheet, layer: int, norm: str) -> torch.Tensor:
    m = model.blocks[layer].mlp
    D = sheet.mlp_out.double().cpu()[:, None]  # [d_mlp, 1, d_model]
    return _unit_costs([(_abs64(m.W_in).T[:, None], D, _layer_scale([m.W_in], norm)),
                        (_abs64(m.W_out)[:, None], D, _layer_scale([m.W_out], norm))])


def _relocate_units(M: torch.Tensor, candidates: list[int], swap) -> int:
    """Move each candidate unit to its cheapest position (the first on ties, as torch.argmin)."""
    moved = 0
    for j in candidates:
        delta = M[j] + M[:, j] - M[j, j] - M.diagonal()
        k = int(torch.argmin(delta))
        if k != j:
            swap(j, k)
            M[[j, k]] = M[[k, j]]
            moved += 1
    return moved


def _top(score: torch.Tensor, k: int) -> list[int]:
    return torch.flip(torch.argsort(score), [0])[:k].tolist()


def resid_importance(model: Transformer) -> torch.Tensor:
    emb = model.embed
    score = _abs64(emb.W_E if model.cfg.d_vocab else emb.W_in).sum(0) + _abs64(model.unembed.W_U).sum(1)
    for block in model.blocks:
        a = block.attn
        score = score + _abs64(a.W_Q, a.W_K, a.W_V).sum((0, 2)) + _abs64(a.W_O).sum((0, 1))
        if block.mlp is not None:
            score = score + _abs64(block.mlp.W_in).sum(1) + _abs64(block.mlp.W_out).sum(0)
    return score


def head_neuron_importance(model: Transformer, layer: int) -> torch.Tensor:
    """[n_heads, d_head]: mean over q, k, v of incoming |W| (the reference's out_fold mean) + |W_O|."""
    qkv, out, _ = _head_abs(model, layer)
    return qkv.sum(-1) / 3 + out.sum(-1)


def mlp_importance(model: Transformer, layer: int) -> torch.Tensor:
    m = model.blocks[layer].mlp
    return _abs64(m.W_in).sum(0) + _abs64(m.W_out).sum(1)


@torch.no_grad()
def relocate(model: Transformer, sheet: Sheet, top_k: int = 20, norm: str = "mean") -> int:
    """One round of BIMT swaps (module docstring); returns how many units moved."""
    moved = 0
    for layer in reversed(range(model.cfg.n_layers)):
        if model.blocks[layer].mlp is not None:
            M = mlp_unit_costs(model, sheet, layer, norm)
            moved += _relocate_units(M, _top(mlp_importance(model, layer), top_k),
                                     lambda i, j, l=layer: swap_mlp_neurons(model, l, i, j))
        heads = _top(head_neuron_importance(model, layer).mean(1), top_k)
        moved += _relocate_units(head_unit_costs(model, sheet, layer, norm), heads,
                                 lambda i, j, l=layer: swap_heads(model, l, i, j))
        score = head_neuron_importance(model, layer)
        for head in range(model.cfg.n_heads):
            M = head_neuron_unit_costs(model, sheet, layer, head, norm)
            moved += _relocate_units(M, _top(score[head], top_k),
                                     lambda i, j, l=layer, h=head: swap_head_neurons(model, l, h, i, j))
    moved += _relocate_units(resid_unit_costs(model, sheet, norm), _top(resid_importance(model), top_k),
                             lambda i, j: swap_resid(model, i, j))
    return moved


# ---- the reference's recompute, for tests ----

@torch.no_grad()
def full_cost(model: Transformer, sheet: Sheet, norm: str = "mean") -> torch.Tensor:
    """The whole connection cost in float64 (distance weight 1, l0 0: the terms swaps change)."""
    cost = torch.zeros((), dtype=torch.float64)
    for weights, dist, _ in weight_layers(model, sheet):
        if dist is None:
            continue
        s = _layer_scale(weights, norm)
        for w in weights:
            cost += (w.detach().double().cpu().abs() * dist.double().cpu()).sum() * s
    return cost


def best_position_reference(model: Transformer, sheet: Sheet, swap, j: int, n: int, norm: str = "mean") -> int:
    """Try every position k < n by swap(j, k), recompute the whole cost, swap back."""
    costs = []
    for k in range(n):
        swap(j, k)
        costs.append(full_cost(model, sheet, norm))
        swap(j, k)
    return int(torch.argmin(torch.stack(costs)))
