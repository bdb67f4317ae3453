"""ACDC and exact per-edge scores on the head-level transformer graph (workers.transformer_graph);
the MLP graph's ACDC is the rest of this package.

Definition (design.md, "ACDC, precisely", transformers): receivers in reverse topological order,
here the reverse of EAP-IG's backward order (logits, m{L-1}, a{L-1}.h{H-1}<v> .. a{L-1}.h0<v>, the
<k>s, the <q>s, m{L-2}, ...); each receiver's senders in ascending forward order (input, a0.h0, ...).
Edge e is removed for good when metric(H without e) - metric(H) < tau, else restored.
`acdc_naive` is that definition literally (one full masked forward per candidate) and the
reference the tests and the benchmark compare against.

Why `acdc` is much faster and returns the same circuit:
- While receiver r (layer l) is decided, every edge into a receiver upstream of it is still live, so
  r's senders hold the full model's clean outputs and removing s -> r changes r's input by exactly
  abl[s] - out[s]. Nothing upstream is recomputed: the circuit's state (every sender's output,
  every receiver's input, every head's q/k/v) is cached and only the nodes downstream of r that a
  live edge reaches are run again (`_Cache.rows`). A node with no live path to the logits gives
  every candidate an increase of exactly 0, as the naive forward (unchanged bit for bit) does.
- The candidates of one receiver are evaluated together along a batch dimension (as auto-circuit
  does), speculatively: guess each decision (at first "removed"), build the chain of inputs those
  guesses imply, evaluate all rows at once and accept decisions in order up to and including the
  first one that contradicts its guess (its own state was the true one). The rows after it were
  measured at a state that differs by one edge: their decisions are the next round's guesses.
  Every accepted decision is computed at exactly the state of the sequential definition, so the
  circuit is the same; guessing only affects speed.
All decisions are made in float64; "the same circuit" holds for every decision whose increase is
not within rounding (~1e-15 relative) of tau.

Scores (design.md): `acdc`, the metric increase measured when the edge was tried; `exact`,
metric(full model with only this edge ablated) - metric(full model).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from circuitry.workers.transformer_graph import TransformerProblem, _ln

# most candidate rows evaluated in one batch (bounds memory: rows x N x P x max(D, d_mlp) floats)
MAX_ROWS = 64
# the first speculative window of a receiver (`_decide`: it doubles while every guess holds and
# falls to the guesses that held after a wrong one); on a 2-layer, 8-head, d_model 128 model at
# tau 0.05 (295 live candidates) a fixed window of 64 evaluated 481 rows, this rule 328
FIRST_WINDOW = 2


@dataclass
class TransformerEdgeResult:
    mask: torch.Tensor  # bool [R, S], True = kept (only graph.real edges meaningful)
    scores: torch.Tensor  # float64 [R, S]
    forward_examples: int  # example-forwards spent (a partial downstream pass counts as one)
    edges_tested: int | None = None


def _inference(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.inference_mode():
            out = fn(*args, **kwargs)
        if isinstance(out, TransformerEdgeResult):
            out.mask, out.scores = out.mask.clone(), out.scores.clone()
        elif isinstance(out, tuple):
            out = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in out)
        return out
    return run


def receiver_order(problem: TransformerProblem) -> list[int]:
    return list(range(len(problem.graph.receivers) - 1, -1, -1))


# ---------------------------------------------------------------- the reference

@_inference
def acdc_naive(problem: TransformerProblem, tau: float, max_edges: int | None = None) -> TransformerEdgeResult:
    """The sequential definition, literally. `max_edges` stops after that many candidates (a prefix
    of the visiting order, for timing); edges not reached stay kept with score 0."""
    g = problem.graph
    mask = g.full_mask()
    scores = torch.zeros(mask.shape, dtype=torch.float64)
    current = problem.circuit_metric(mask)
    spent, tried = problem.n_examples, 0
    for r in receiver_order(problem):
        for s in range(g.n_senders[r]):
            if max_edges is not None and tried >= max_edges:
                return TransformerEdgeResult(mask, scores, spent, tried)
            mask[r, s] = False
            new = problem.circuit_metric(mask)
            spent += problem.n_examples
            tried += 1
            scores[r, s] = new - current
            if new - current < tau:
                current = new
            else:
                mask[r, s] = True
    return TransformerEdgeResult(mask, scores, spent, tried)


@_inference
def exact_naive(problem: TransformerProblem) -> torch.Tensor:
    """Reference for `exact_scores`: [R, S] scores, one full forward per edge."""
    g = problem.graph
    full = problem.circuit_metric(g.full_mask())
    out = torch.zeros(g.real.shape, dtype=torch.float64)
    for r, s in g.edge_pairs.tolist():
        mask = g.full_mask()
        mask[r, s] = False
        out[r, s] = problem.circuit_metric(mask) - full
    return out


# ---------------------------------------------------------------- the cached circuit state

class _Cache:
    """The current circuit's forward pass, cached: every sender's output `out` [S, N, P, D], every
    receiver's input `xin` [R, N, P, D] and every head's projections `qkv` [L, 3, H, N, P, dh];
    `rows` evaluates new inputs of one receiver by running only what a live edge reaches."""

    def __init__(self, problem: TransformerProblem, mask: torch.Tensor):
        g, w = problem.graph, problem.graph.w
        self.p, self.g, self.mask = problem, g, mask
        self.abl = problem.ablated
        self.out = problem.clean.clone()
        # a receiver's senders are upstream of every receiver not yet decided, so they keep the
        # full model's clean outputs: removing s -> r always moves r's input by deltas[s]
        self.deltas = problem.ablated - problem.clean
        self.silent = (self.deltas.reshape(len(self.out), -1) == 0).all(1)
        S, N, P, D = self.out.shape
        flat = self.out.reshape(S, -1)
        xin = [(mask[r, :g.n_senders[r]].to(flat.dtype) @ flat[:g.n_senders[r]]).reshape(N, P, D) + g.const[r]
               for r in range(len(g.receivers))]
        self.xin = torch.stack(xin)
        self.qkv = torch.empty(w.n_layers, 3, w.n_heads, N, P, w.d_head, dtype=torch.float64, device=flat.device)
        for l in range(w.n_layers):
            for i in range(3):
                x = self.xin[g.head_recv[l, i]]
                if w.layer_norm:
                    x = _ln(x, w.ln1_w[l], w.ln1_b[l])
                self.qkv[l, i] = g.project(l, i, x)
        self.terms = self._terms(self.xin[-1])
        # receiver -> (kind, layer, which, head, sender index of its node)
        self.info = []
        for r, name in enumerate(g.receivers):
            if name == "logits":
                self.info.append(("logits", w.n_layers, None, None, None))
            elif name[0] == "m":
                l = int(name[1:])
                self.info.append(("mlp", l, None, None, g.sender_index(name)))
            else:
                head = name[: name.index("<")]
                l, h = (int(t[1:]) for t in head.split("."))
                self.info.append(("head", l, "qkv".index(name[-2]), h, g.sender_index(head)))
        self.mlp_recv = [g.receiver_index(f"m{l}") if w.has_mlp else None for l in range(w.n_layers)]

    def reaches(self, r: int) -> bool:
        """Whether receiver r's node has a live path to the logits under the current mask."""
        if self.info[r][0] == "logits":
            return True
        live = torch.zeros(len(self.g.senders), dtype=torch.bool)
        for rr in range(len(self.g.receivers) - 1, -1, -1):  # reverse topological order
            node = self.info[rr][4]
            if node is None or live[node]:
                live |= self.mask[rr]
        return bool(live[self.info[r][4]])

    def _terms(self, x: torch.Tensor) -> torch.Tensor:
        """Metric terms from final residual inputs x [..., N, P, D]: unembedded at the scored
        positions only (the metric reads nothing else)."""
        pos = self.p.metric.positions
        return self.p.metric.per_example_scored(self.g.unembed(x[..., pos, :]))

    def rows(self, r: int, X: torch.Tensor, commit: bool = False) -> torch.Tensor:
        """Per-example metric terms [B, N] of the circuit with receiver r's input replaced by each
        row of X [B, N, P, D]. With `commit` (B = 1), the cache takes that state."""
        g, w = self.g, self.g.w
        kind, layer, which, head, node = self.info[r]
        if commit:
            self.xin[r] = X[0]
        if kind == "logits":
            terms = self._terms(X)
            if commit:
                self.terms = terms[0]
            return terms
        changed, deltas = [], []
        if kind == "mlp":
            new = g.mlp(layer, X)
        else:
            x = _ln(X, w.ln1_w[layer], w.ln1_b[layer]) if w.layer_norm else X
            proj = g.project(layer, which, x[None], [head])[0]
            qkv = [self.qkv[layer, i, head] for i in range(3)]
            qkv[which] = proj
            new = g.heads_from_qkv(layer, *(t[None] for t in qkv), [head])[0]
            if commit:
                self.qkv[layer, which, head] = proj[0]
        changed.append(node)
        deltas.append(new - self.out[node])
        if commit:
            self.out[node] = new[0]
        # the downstream stages in order: [mlp of this layer,] then each later layer's heads and mlp
        stages = []
        if kind == "head" and w.has_mlp:
            stages.append(("mlp", layer))
        for l in range(layer + 1, w.n_layers):
            stages.append(("heads", l))
            if w.has_mlp:
                stages.append(("mlp", l))
        for stage, l in stages:
            idx = torch.tensor(changed)
            if stage == "mlp":
                m = self.mlp_recv[l]
                live = self.mask[m, idx]
                if not bool(live.any()):
                    continue
                x = self.xin[m] + _sum_live(live, deltas)
                new = g.mlp(l, x)
                s = g.sender_index(f"m{l}")
                changed.append(s)
                deltas.append(new - self.out[s])
                if commit:
                    self.xin[m], self.out[s] = x[0], new[0]
                continue
            recv = g.head_recv[l]  # [3, H]
            live = self.mask[recv.reshape(-1)][:, idx].reshape(3, w.n_heads, -1)  # [3, H, C]
            hs = torch.nonzero(live.any(-1).any(0))[:, 0].tolist()
            if not hs:
                continue
            qkv = []
            for i in range(3):
                li = live[i, hs]  # [h, C]
                if bool(li.any()):
                    dx = torch.einsum("hc,c...->h...", li.to(X.dtype), torch.stack(deltas))
                    x = self.xin[recv[i, hs]][:, None] + dx  # [h, B, N, P, D]
                    if commit:
                        self.xin[recv[i, hs]] = x[:, 0]
                    xn = _ln(x, w.ln1_w[l], w.ln1_b[l]) if w.layer_norm else x
                    proj = g.project(l, i, xn, hs)
                    if commit:
                        self.qkv[l, i, hs] = proj[:, 0]
                else:
                    proj = self.qkv[l, i, hs][:, None]
                qkv.append(proj)
            new = g.heads_from_qkv(l, *qkv, hs)  # [h, B, N, P, D]
            for k, h in enumerate(hs):
                s = g.sender_index(f"a{l}.h{h}")
                changed.append(s)
                deltas.append(new[k] - self.out[s])
                if commit:
                    self.out[s] = new[k, 0]
        live = self.mask[-1, torch.tensor(changed)]
        if not bool(live.any()):
            terms = self.terms.expand(X.shape[0], -1).clone()
        else:
            x = self.xin[-1] + _sum_live(live, deltas)
            if commit:
                self.xin[-1] = x[0]
            terms = self._terms(x)
        if commit:
            self.terms = terms[0].clone()
        return terms


def _sum_live(live: torch.Tensor, deltas: list) -> torch.Tensor:
    picked = [d for d, keep in zip(deltas, live.tolist()) if keep]
    out = picked[0]
    for d in picked[1:]:
        out = out + d
    return out


# ---------------------------------------------------------------- fast ACDC

def _decide(cache: _Cache, r: int, tau: float, met_now: float, max_rows: int):
    """Sequential decisions for the edges into receiver r (ascending sender), in speculative
    batches (module doc). Returns (kept [n], scores [n], final input (None: the receiver cannot
    reach the logits), metric after, rows spent)."""
    g = cache.g
    n = g.n_senders[r]
    deltas = cache.deltas[:n]
    kept = torch.ones(n, dtype=torch.bool)
    scores = torch.zeros(n, dtype=torch.float64)
    state = cache.xin[r]
    silent = cache.silent[:n].clone()
    if not cache.reaches(r):
        # every increase is exactly 0 and nothing the metric reads changes: a node that cannot
        # reach the logits never can again (edges are only removed), so its cache can go stale
        kept[:] = not (0.0 < tau)
        return kept, scores, None, met_now, 0
    kept[silent] = not (0.0 < tau)
    active = torch.nonzero(~silent)[:, 0]
    guess = torch.ones(active.numel(), dtype=torch.bool)  # guessed "removed"
    start, rows_spent, window = 0, 0, min(FIRST_WINDOW, max_rows)
    while start < active.numel():
        stop = min(active.numel(), start + window)
        g_w = guess[start:stop]
        d = deltas[active[start:stop]]  # [B, N, P, D]
        gd = d * g_w.view(-1, 1, 1, 1).to(d.dtype)
        before = torch.cumsum(gd, 0) - gd + state  # exclusive prefix of the guessed removals
        after = before + d
        met = cache.rows(r, after).mean(1)
        rows_spent += after.shape[0]
        # each row's increase over the metric at its own starting state: the row of the last
        # guessed removal before it, or met_now
        prev = torch.cat([met.new_tensor([met_now]), met])
        last = torch.cummax(torch.where(g_w, torch.arange(1, len(g_w) + 1), torch.zeros_like(g_w, dtype=torch.long)), 0).values
        from_idx = torch.cat([last.new_zeros(1), last[:-1]])
        inc = met - prev[from_idx]
        remove = inc < tau
        wrong = torch.nonzero(remove != g_w)
        accepted = len(g_w) if wrong.numel() == 0 else int(wrong[0, 0]) + 1
        k = accepted - 1
        ids = active[start:start + accepted]
        scores[ids] = inc[:accepted]
        kept[ids] = ~remove[:accepted]
        if bool(remove[k]):
            state, met_now = after[k], float(met[k])
        else:
            state = before[k]
            removed = torch.nonzero(g_w[:k])
            if removed.numel():
                met_now = float(met[int(removed[-1, 0])])
        guess[start + accepted:stop] = remove[accepted:]
        start += accepted
        # a row costs a pass through the live downstream nodes (an MLP's is most of a forward), so
        # rows wasted after a wrong guess cost more than the rounds a small window adds: grow the
        # window while guesses hold, shrink it to what held after a wrong one
        window = min(max_rows, 2 * window) if accepted == len(g_w) else max(1, accepted)
    return kept, scores, state, met_now, rows_spent


@_inference
def acdc(problem: TransformerProblem, tau: float, progress: Callable[[int], None] | None = None,
         max_rows: int = MAX_ROWS) -> TransformerEdgeResult:
    """ACDC's circuit, exactly the sequential definition's (module doc), fast."""
    g = problem.graph
    mask = g.full_mask()
    scores = torch.zeros(mask.shape, dtype=torch.float64)
    cache = _Cache(problem, mask)
    met_now = float(cache.terms.mean())
    spent, tested = problem.n_examples, 0
    for r in receiver_order(problem):
        n = g.n_senders[r]
        kept, sc, state, met_now, rows = _decide(cache, r, tau, met_now, max_rows)
        spent += rows * problem.n_examples
        tested += n
        mask[r, :n] = kept
        scores[r, :n] = sc
        if state is not None and not bool(kept[~cache.silent[:n]].all()):  # its input moved
            cache.rows(r, state[None], commit=True)
        if progress:
            progress(n)
    return TransformerEdgeResult(mask, scores, spent, tested)


@_inference
def exact_scores(problem: TransformerProblem, progress: Callable[[int], None] | None = None,
                 max_rows: int = MAX_ROWS) -> tuple[torch.Tensor, int]:
    """metric(full model with only edge e ablated) - metric(full model), [R, S], and the
    example-forwards spent: each receiver's candidates batched against the cached full model."""
    g = problem.graph
    cache = _Cache(problem, g.full_mask())
    full = float(cache.terms.mean())
    out = torch.zeros(g.real.shape, dtype=torch.float64)
    spent = problem.n_examples
    for r in range(len(g.receivers)):
        n = g.n_senders[r]
        deltas, silent = cache.deltas[:n], cache.silent[:n]
        for a in range(0, n, max_rows):
            rows = cache.xin[r] + deltas[a:a + max_rows]
            out[r, a:a + rows.shape[0]] = cache.rows(r, rows).mean(1) - full
            spent += rows.shape[0] * problem.n_examples
        out[r, :n][silent] = 0.0
        if progress:
            progress(n)
    return out, spent
