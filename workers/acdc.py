"""ACDC and exact per-edge ablation scores on the neuron graph, fast and exact.

Definition (design.md, "ACDC, precisely"): receivers in reverse topological order (output
positions ascending, then each hidden layer down to layer 1), for each receiver its senders in
ascending position; remove edge e for good if metric(H without e) - metric(H) < tau, else restore
it. `acdc_naive` is that definition literally (one full masked forward per candidate edge) and is
the reference the tests and the benchmark compare against.

Why `acdc` can be much faster and still return the same circuit:
- While receivers of layer m are processed, every edge into layers < m is still live, so the
  senders hold the full model's clean activations and nothing upstream needs recomputing.
- Removing edge i -> j changes only receiver j's pre-activation, by W[j,i] * (h_abl_i - h_i). Its
  effect reaches the metric only through neurons reachable from j along live, non-zero edges that
  can themselves reach the metric's outputs (masks of layers >= m are already final), so only that
  sub-network is recomputed; if j has no such path, every candidate's increase is exactly 0.
- The candidates of one receiver are evaluated speculatively in one batched op: guess each
  decision, build the chain of receiver states those guesses imply (a cumulative sum of deltas),
  evaluate all of them at once and accept decisions in order up to and including the first one
  that contradicts its guess (its own state was correct). The measured decisions become the next
  round's guesses. Every accepted decision is computed against exactly the state the sequential
  definition would have, so the circuit is the same; guessing only affects speed.
- Edges whose delta is identically zero (zero weight, or an ablated value equal to the clean one)
  and receivers with no path to the metric get an increase of exactly 0.0, as the naive
  definition does (its forward is unchanged bit for bit), so tau = 0 ties agree as well.
All decisions are made in float64. "The same circuit" holds for every decision whose increase
is not within float64 rounding (~1e-16 relative) of tau; a tie at rounding level is decided by
rounding in any implementation, the naive one included, so pick tau above the noise floor.

Score semantics (design.md): `acdc` scores are the metric increase measured when the edge was
tried; `exact` scores are metric(full model with only this edge ablated) - metric(full model),
where metric(full model) = 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from workers.graph import Problem

# Largest candidate batch, in float64 elements of the widest downstream activation (32 MiB).
BATCH_ELEMENTS = 1 << 22


@dataclass
class EdgeResult:
    masks: list[torch.Tensor]  # bool, one per weight matrix, True = kept
    scores: list[torch.Tensor]  # float64, same shapes, see score semantics above
    forward_examples: int  # example-forwards spent (a partial downstream pass counts as one)


def _pre_activations(problem: Problem) -> list[torch.Tensor | None]:
    g = problem.graph
    return [None] + [problem.clean[l] @ g.weights[l].T + g.biases[l] for l in range(g.n_layers)]


class _Downstream:
    """The current circuit's state at layers >= m (receivers of layer m under test) and a batched
    evaluator of the metric for new values of one receiver's pre-activation."""

    def __init__(self, problem: Problem, masks, m: int, z, h, batch_elements: int):
        g = problem.graph
        self.p, self.m, self.z, self.h, self.L = problem, m, z, h, g.n_layers
        # live = kept and non-zero: a zero weight carries no change, so it cannot extend a path
        self.live = {l: masks[l] & (g.weights[l] != 0) for l in range(m, self.L)}
        self.wlive = {l: g.weights[l] * self.live[l] for l in range(m, self.L)}
        co = problem.metric.relevant_outputs(g.shape[-1])
        self.co = {self.L: co}
        for l in range(self.L - 1, m - 1, -1):
            co = (self.live[l] & co[:, None]).any(0)
            self.co[l] = co
        # a candidate row holds [N, width] tensors of every downstream layer at once
        widest = max(g.shape[m + 1:]) if m < self.L else g.shape[-1]
        self.chunk = max(1, batch_elements // (problem.n_examples * widest) - 1)

    def reaches_metric(self, j: int) -> bool:
        return bool(self.co[self.m][j])

    def plan(self, j: int):
        """Per downstream layer: the reached positions (a slice when all are reached, which
        avoids gathers) and the live weights between them."""
        if self.m == self.L:
            return []
        g = self.p.graph

        def positions(reached: torch.Tensor, layer: int):
            idx = torch.nonzero(reached)[:, 0]
            return slice(None) if idx.numel() == g.shape[layer] else idx

        r = positions(self.live[self.m][:, j] & self.co[self.m + 1], self.m + 1)
        steps = [(r, self.wlive[self.m][r, j], None)]
        for l in range(self.m + 1, self.L):
            r_next = positions(self.live[l][:, r].any(1) & self.co[l + 1], l + 1)
            w = self.wlive[l][r_next][:, r]
            # z_next = h_new @ w.T + (z_next_now - h_now @ w.T): one matmul and one add per row
            offset = self.z[l + 1][:, r_next] - self.h[l][:, r] @ w.T
            steps.append((r_next, w.T.contiguous(), offset))
            r = r_next
        return steps

    def evaluate(self, j: int, zc: torch.Tensor, plan):
        """Metric for each candidate pre-activation zc [B, N] of receiver j, and the new states."""
        m, L, z, h = self.m, self.L, self.z, self.h
        B = zc.shape[0]
        hj = zc if m == L else F.silu(zc)
        states = [(m, torch.tensor([j]), zc[..., None], hj[..., None])]
        if m == L:
            y = h[L].expand(B, *h[L].shape).clone()
            y[:, :, j] = zc
            return self.p.metric(y), states
        dh = hj - h[m][:, j]
        r, w, _ = plan[0]
        zl = torch.addcmul(z[m + 1][:, r], dh[..., None], w)  # rank one: only j's live out-edges move
        for k, l in enumerate(range(m + 1, L + 1)):
            hl = zl if l == L else F.silu(zl)
            states.append((l, r, zl, hl))
            if l == L:
                if isinstance(r, slice):
                    y = zl
                else:
                    y = h[L].expand(B, *h[L].shape).clone()
                    y[:, :, r] = zl
                return self.p.metric(y), states
            r, w_t, offset = plan[k + 1]
            zl = hl @ w_t + offset

    def commit(self, states):
        """Write the single candidate's states (B = 1) into the circuit's state."""
        for l, r, zl, hl in states:
            self.z[l][:, r] = zl[0]
            self.h[l][:, r] = hl[0]


def _deltas(problem: Problem, layer: int, j: int) -> torch.Tensor:
    """[n_senders, N]: the change of receiver j's pre-activation when each edge into it is removed."""
    diff = problem.ablated[layer] - problem.clean[layer]
    return problem.graph.weights[layer][j][:, None] * diff.T


def acdc(problem: Problem, tau: float, progress: Callable[[int], None] | None = None,
         batch_elements: int = BATCH_ELEMENTS) -> EdgeResult:
    """ACDC, exactly the circuit of `acdc_naive`, computed with cached state, downstream-only
    recomputation and speculative batching of each receiver's candidates (see module doc)."""
    g = problem.graph
    L, N = g.n_layers, problem.n_examples
    masks = g.full_masks()
    scores = [torch.zeros_like(w) for w in g.weights]
    z = [t.clone() if t is not None else None for t in _pre_activations(problem)]
    h = [t.clone() for t in problem.clean]
    spent = 2 * N  # the clean and corrupted full forwards
    removed_when_silent = 0.0 < tau  # a candidate whose increase is exactly 0
    for m in range(L, 0, -1):
        down = _Downstream(problem, masks, m, z, h, batch_elements)
        diff_all = problem.ablated[m - 1] - problem.clean[m - 1]
        n_send = g.shape[m - 1]
        for j in range(g.shape[m]):
            if not down.reaches_metric(j):
                masks[m - 1][j, :] = not removed_when_silent
                if progress:
                    progress(n_send)
                continue
            deltas = g.weights[m - 1][j][:, None] * diff_all.T
            state, plan, used = _decide_receiver(down, j, z[m][:, j].clone(), deltas, tau, masks[m - 1][j],
                                           scores[m - 1][j], progress)
            spent += used
            _, final_states = down.evaluate(j, state[None], plan)
            spent += N
            down.commit(final_states)
    return EdgeResult(masks, scores, spent)


def _next_window(window: int, B: int, accepted: int, chunk: int) -> int:
    """How many candidates to speculate about next: a contradicted guess wastes the rest of its
    batch, so after one aim at about twice the run of correct guesses just seen; an all-correct
    batch earns a batch twice as large (measured on dense random nets, this beats stopping at
    edges whose increase is near tau, which makes many tiny batches)."""
    return min(chunk, 2 * window if accepted == B else max(8, 2 * accepted))


def _decide_receiver(down: _Downstream, j, state, deltas, tau, mask_row, score_row, progress):
    """Sequential ACDC decisions for the edges into receiver j (ascending sender), evaluated in
    speculative batches (module doc). Writes mask_row/score_row; returns the receiver's final
    pre-activation and the example-forwards spent."""
    N = state.shape[0]
    n_send = deltas.shape[0]
    plan = down.plan(j)
    removed_when_silent = 0.0 < tau  # a candidate whose increase is exactly 0
    silent = (deltas == 0).all(1).tolist()
    # first guesses: silent edges are known; the rest "kept", i.e. measure independent effects
    guesses = [removed_when_silent if silent[i] else False for i in range(n_send)]
    start, spent, window = 0, 0, down.chunk
    while start < n_send:
        B = min(n_send - start, window)
        d = deltas[start:start + B]
        gmask = torch.tensor(guesses[start:start + B], dtype=torch.float64)
        taken = torch.cumsum(gmask[:, None] * d, 0)
        before = torch.cat([torch.zeros(1, N, dtype=torch.float64), taken[:-1]]) + state
        after = before + d
        rows = torch.cat([state[None], after])
        met, _ = down.evaluate(j, rows, plan)
        spent += rows.shape[0] * N
        met = met.tolist()
        met_before, accepted, last = met[0], B, None
        for k in range(B):
            i = start + k
            inc = 0.0 if silent[i] else met[k + 1] - met_before
            remove = inc < tau
            if last is None:  # this edge's chain state was right: an exact decision
                score_row[i] = inc
                if remove != guesses[i]:
                    accepted, last = k + 1, (k, remove)
            if guesses[i]:
                met_before = met[k + 1]
            if not silent[i]:
                guesses[i] = remove  # exact up to the contradiction, the next guess after it
        k, remove = last if last is not None else (B - 1, guesses[start + B - 1])
        for kk in range(accepted):
            mask_row[start + kk] = not guesses[start + kk]
        # the state after the last accepted edge, exactly as evaluated in the batch
        state = (after[k] if remove else before[k]).clone()
        start += accepted
        window = _next_window(window, B, accepted, down.chunk)
        if progress:
            progress(accepted)
    return state, plan, spent


def exact_scores(problem: Problem, start: int = 0, stop: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 batch_elements: int = BATCH_ELEMENTS) -> tuple[torch.Tensor, int]:
    """metric(full model with only edge e ablated) - metric(full model) (= 0) for the edges
    [start, stop) of the canonical order; returns (float64 scores, example-forwards spent).

    Each receiver's candidates are always evaluated in the same fixed batches (aligned to the
    receiver, never to start/stop), so any chunking of the edge list gives identical bits."""
    g = problem.graph
    offsets = g.edge_offsets()
    stop = offsets[-1] if stop is None else stop
    if not 0 <= start <= stop <= offsets[-1]:
        raise ValueError(f"edge slice [{start}, {stop}) outside 0..{offsets[-1]}")
    out = torch.zeros(stop - start, dtype=torch.float64)
    N, spent = problem.n_examples, 0
    z = _pre_activations(problem)
    masks = g.full_masks()
    for layer in range(g.n_layers):
        lo, hi = max(start, offsets[layer]), min(stop, offsets[layer + 1])
        if lo >= hi:
            continue
        n_send = g.shape[layer]
        down = _Downstream(problem, masks, layer + 1, z, problem.clean, batch_elements)
        chunk = down.chunk
        diff_all = problem.ablated[layer] - problem.clean[layer]
        for j in range((lo - offsets[layer]) // n_send, (hi - 1 - offsets[layer]) // n_send + 1):
            base = offsets[layer] + j * n_send
            scores = torch.zeros(n_send, dtype=torch.float64)
            if down.reaches_metric(j):
                plan = down.plan(j)
                deltas = g.weights[layer][j][:, None] * diff_all.T
                silent = (deltas == 0).all(1)
                for c in range(0, n_send, chunk):
                    rows = z[layer + 1][:, j] + deltas[c:c + chunk]
                    met, _ = down.evaluate(j, rows, plan)
                    scores[c:c + chunk] = met
                    spent += rows.shape[0] * N
                scores[silent] = 0.0
            a, b = max(lo, base), min(hi, base + n_send)
            out[a - start:b - start] = scores[a - base:b - base]
            if progress:
                progress(b - a)
    return out, spent


def acdc_naive(problem: Problem, tau: float, max_edges: int | None = None) -> EdgeResult:
    """The sequential definition, literally: one full masked forward per candidate edge.
    `max_edges` stops after that many candidates (a prefix of the visiting order, for timing);
    edges not reached stay kept with score 0."""
    g = problem.graph
    masks = g.full_masks()
    scores = [torch.zeros_like(w) for w in g.weights]
    current = problem.circuit_metric(masks)
    spent, tried = problem.n_examples, 0
    for m in range(g.n_layers, 0, -1):
        for j in range(g.shape[m]):
            for i in range(g.shape[m - 1]):
                if max_edges is not None and tried >= max_edges:
                    return EdgeResult(masks, scores, spent)
                masks[m - 1][j, i] = False
                new = problem.circuit_metric(masks)
                spent += problem.n_examples
                tried += 1
                scores[m - 1][j, i] = new - current
                if new - current < tau:
                    current = new
                else:
                    masks[m - 1][j, i] = True
    return EdgeResult(masks, scores, spent)


def exact_naive(problem: Problem) -> torch.Tensor:
    """Reference for `exact_scores`: one full masked forward per edge, canonical order."""
    g = problem.graph
    out = []
    for l, w in enumerate(g.weights):
        for j in range(w.shape[0]):
            for i in range(w.shape[1]):
                masks = g.full_masks()
                masks[l][j, i] = False
                out.append(problem.circuit_metric(masks))
    return torch.tensor(out, dtype=torch.float64)
