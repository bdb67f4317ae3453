"""ACDC, fast: exactly the circuit of `reference.acdc_naive`, computed receiver by receiver in
speculative rounds.

- Only the downstream sub-network a receiver reaches is recomputed (`downstream`).
- The candidates of one receiver are evaluated speculatively in one batched op: guess each
  decision (`guesses`), build the chain of receiver states those guesses imply (a cumulative sum
  of deltas), evaluate all of them at once and accept decisions in order up to and including the
  first one that contradicts its guess (its own state was correct). Every accepted decision is
  computed against exactly the state the sequential definition would have, and made by the same
  `removes_edge`, so the circuit is the same; guessing only affects speed. A round is not cut at
  candidates predicted close to tau: on dense nets the rounds (a fixed cost of op dispatch each),
  not the rows, are what takes the time.
- Probes for the guesses' model are taken at a receiver's start and, after a round whose guesses
  were contradicted, at the next round that has candidates without a measured decision (the tail
  of a contradicted round is guessed from its measurements, and often ends the receiver).
- The current circuit's per-example metric terms are kept (`terms`), so a round evaluates only
  its candidates' rows (no row for the current state), and silent candidates (delta identically
  zero: a zero weight, or an ablated value equal to the clean one) are decided without any row,
  with an increase of exactly 0.0 as in the naive definition, so tau = 0 ties agree as well. A
  receiver's final terms, as its round evaluated them, stay the circuit's terms after it is
  committed (no recomputation).
- Many candidates whose rows pass a hidden layer are decided on an interpolant (`interpolant`).
- The scorers run under `torch.inference_mode` (`reference.without_autograd`).
"""
from __future__ import annotations

from typing import Callable

import torch

from circuitry.workers.acdc.downstream import BATCH_ELEMENTS, Downstream, current_terms, full_state
from circuitry.workers.acdc.guesses import Quadratic, guess, measure_round, metric_model, next_window, removed_before
from circuitry.workers.acdc.interpolant import Interpolant, interpolates
from circuitry.workers.acdc.reference import EdgeResult, removes_edge, sender_orders, without_autograd
from circuitry.workers.graph import Problem
from circuitry.workers.names import CHEB_NODES


@without_autograd
def acdc(problem: Problem, tau: float, progress: Callable[[int], None] | None = None,
         batch_elements: int = BATCH_ELEMENTS, order: str = "ascending", seed: int = 0) -> EdgeResult:
    """ACDC, exactly the circuit of `acdc_naive`, computed with cached state, downstream-only
    recomputation and speculative batching of each receiver's candidates (see module doc).
    `order`/`seed`: the sender order within each receiver (`sender_orders`). Runs on the
    problem's device; masks and scores come back on the CPU."""
    g = problem.graph
    L, N = g.n_layers, problem.n_examples
    dev = problem.clean[0].device
    orders = sender_orders(g.shape, order, seed)
    masks = [torch.ones(w.shape, dtype=torch.bool, device=dev) for w in g.weights]
    scores = [torch.zeros(w.shape, dtype=torch.float64) for w in g.weights]
    z, h = full_state(problem)
    spent = 2 * N  # the clean and corrupted full forwards
    tested = 0
    removed_when_silent = removes_edge(0.0, tau)  # a candidate whose increase is exactly 0
    terms = current_terms(problem.metric, h[L])  # the current circuit's per-example metric terms
    for m in range(L, 0, -1):
        down = Downstream(problem, masks, m, z, h, batch_elements)
        diff_t = (problem.ablated[m - 1] - problem.clean[m - 1]).T.contiguous()  # [senders, N]
        # silent candidates (delta identically 0): a zero weight or a sender the ablation leaves as it is
        silent_all = (g.weights[m - 1] == 0) | (diff_t == 0).all(1)
        has_silent = silent_all.any(1).tolist()
        n_send = g.shape[m - 1]
        for j in range(g.shape[m]):
            if not down.reaches_metric(j):
                masks[m - 1][j, :] = not removed_when_silent
                if progress:
                    progress(n_send)
                continue
            tested += n_send
            deltas = g.weights[m - 1][j][:, None] * diff_t
            silent = silent_all[j] if has_silent[j] else None
            # another sender order: the rows of `deltas` in visiting order, results mapped back
            senders = slice(None) if orders is None else orders[m, j]
            if orders is not None:
                deltas = deltas[senders.to(deltas.device)]
                silent = None if silent is None else silent[senders.to(deltas.device)]
            plan = down.plan(j)
            state, terms, kept, row_scores, used = decide_receiver(down, j, z[m][j].clone(), terms, deltas,
                                                                    silent, tau, plan, progress)
            masks[m - 1][j, senders] = kept
            scores[m - 1][j, senders] = row_scores.cpu()
            spent += used
            if not bool(kept.all()):  # the state moved: write it downstream (N example-forwards)
                down.commit(j, state, plan)  # `terms` are already the new circuit's (as evaluated)
                spent += N
    return EdgeResult([mk.cpu() for mk in masks], scores, spent, tested)


def decide_receiver(down: Downstream, j, state, terms, deltas, silent, tau, plan, progress):
    """Sequential ACDC decisions for the edges into receiver j (ascending sender), evaluated in
    speculative batches (module doc). `terms` are the current circuit's per-example metric terms
    (the metric at `state`), so a round evaluates only its candidates' rows. Returns the
    receiver's final pre-activation and the circuit's per-example terms there (as evaluated in its
    round, on rows or the interpolant), the kept flags and the scores of its edges (tensors
    [n_send]) and the example-forwards spent."""
    N, n_send = state.shape[0], deltas.shape[0]
    dev = state.device
    # silent candidates (`silent`: delta identically 0; None: there are none) change nothing:
    # increase exactly 0, decided without evaluation; they do not move the state, so the others are
    # decided as if they were absent (a delta that underflows to 0 is evaluated instead, and gives
    # the same 0)
    senders = None if silent is None else torch.nonzero(~silent)[:, 0]
    if senders is not None:
        if progress:
            progress(n_send - senders.numel())
        deltas = deltas[senders]

    def per_sender(kept_candidates, candidate_scores):
        return _with_silent(senders, n_send, kept_candidates, candidate_scores, tau)

    K = deltas.shape[0]
    if K == 0:
        return state, terms, *per_sender(deltas.new_zeros(0, dtype=torch.bool), deltas.new_zeros(0)), 0
    # guesses come from a quadratic model of the metric around a recent state (probes at +-eps
    # beside it, made again at the next round that needs it after one whose guesses were
    # contradicted), or from a measurement made in an earlier round at a slightly different state
    # (the tail of a batch after its first wrong guess); an output receiver under KL is predicted
    # exactly instead (`ExactOutput`). `known`: the measured decisions, candidates before
    # `measured_to` (exact before `start`, the next guesses after it); at the end, the decisions
    known = torch.zeros(K, dtype=torch.bool, device=dev)
    scores_all = torch.zeros(K, dtype=torch.float64, device=dev)
    # finite-difference step per example: the typical size of the candidates' deltas (probes only)
    eps = None
    if not down.closed_form:
        eps = torch.linalg.vector_norm(deltas, dim=0).mul_(K ** -0.5)
        eps.masked_fill_(eps == 0, 1.0)

    # many candidates whose rows pass a hidden layer: their terms from an interpolant (`Interpolant`),
    # fitted on the states a round's guesses reach (refitted when a later round leaves them)
    interpolating, interp, covers_all, spent = interpolates(down, K), None, False, 0
    pairs = not interpolating and down.pairs_pay(deltas)

    def probes(state):  # two rows at +-eps (from the interpolant where it covers them), or the derivatives
        if down.closed_form:
            return down.derivatives(j, state, plan), 0
        at = torch.stack([state - eps, state + eps])
        if interp is not None and interp.covers(at):
            return interp.evaluate(at)[1], 0
        return down.evaluate(j, at, plan)[1], 2 * N

    def model_at(terms, rows):
        return rows if down.closed_form else metric_model(rows[0], terms, rows[1], eps)

    exact = down.exact_output(j, plan)
    model, model_state = None, state  # the quadratic model, made when a round first needs it
    met_now = float(terms.mean())
    start, window, measured_to = 0, down.chunk, 0
    while start < K:
        B = min(K - start, window)
        window_known = known[start:start + B]
        if exact is not None:  # exact predictions: better than a measurement at another state
            g, B = guess(exact(state, deltas[start:start + B]), tau, torch.zeros_like(window_known), window_known,
                          sweeps=16)
        elif start + B <= measured_to:  # a contradicted round's tail: its measured decisions
            g = window_known.clone()
        else:
            if model is None:  # probes at this state (made only here: a model refreshed after every
                # contradicted round went unused where the tail's measured decisions finished the receiver)
                rows, used = probes(state)
                spent += used
                model, model_state = model_at(terms, rows), state
            measured = torch.arange(B, device=dev) < measured_to - start
            g, B = guess(Quadratic(model, state - model_state, deltas[start:start + B]), tau, measured,
                          window_known)
        d = deltas[start:start + B]
        before = removed_before(d, g).add_(state)  # the state each candidate is tried from
        after = before + d
        if interpolating and (interp is None or not (covers_all or interp.covers(after))):
            # a round that holds every remaining candidate: the states it reaches (a narrow interval,
            # few nodes; on digits ~95% of first-layer receivers take one round); else, or when a
            # later round leaves them, every state the remaining candidates can reach (a last fit)
            if interp is None and start + B == K:
                lo, hi = torch.minimum(after.amin(0), state), torch.maximum(after.amax(0), state)
                counts = CHEB_NODES
            else:
                rest = deltas[start:]
                lo, hi = state + rest.clamp(max=0).sum(0), state + rest.clamp(min=0).sum(0)
                counts, covers_all = CHEB_NODES[1:], True
            interp, used = Interpolant.fit(down, j, plan, lo, hi, counts)
            spent += used
            interpolating = interp is not None
            if not interpolating:  # no interpolant reaches the tolerance: exact rows, whole or in pairs
                pairs = down.pairs_pay(deltas)
        if interp is None:
            met_t, per, evaluated = down.chain_terms(j, after, d, g, terms, plan, pairs)
            spent += evaluated
        else:
            met_t, per = interp.evaluate(after)
        inc, remove, accepted, contradicted = measure_round(met_t, g, met_now, tau)
        if interp is not None:
            accepted, used = _settle_unsure(down, j, plan, interp.margin, tau, before, after, inc, remove, met_t, per,
                                            accepted)
            spent += used
        # exact up to the contradiction, the next guesses after it
        known[start:start + B] = remove
        measured_to = max(measured_to, start + B)
        scores_all[start:start + B] = inc  # exact up to `accepted`, measured again after it
        if contradicted or accepted < B:  # the model is made again at the next round that needs one
            model = None
        # the state after the last accepted edge and its terms, exactly as evaluated in the batch
        k = accepted - 1
        if bool(remove[k]):
            state, terms, met_now = after[k], per[k], float(met_t[k])
        else:
            state = before[k]
            removed = torch.nonzero(g[:k])
            if removed.numel():
                r = int(removed[-1, 0])
                terms, met_now = per[r], float(met_t[r])
        start += accepted
        window = next_window(window, B, accepted, down.chunk)
        if progress:
            progress(accepted)
    return state, terms, *per_sender(~known, scores_all), spent


def _with_silent(senders, n_send: int, kept_candidates, candidate_scores, tau: float):
    """A receiver's kept flags and scores per sender [n_send], from those of its evaluated
    candidates (`senders`: their positions; None when every sender was evaluated): a silent
    sender's increase is exactly 0, so it is removed where `removes_edge(0.0, tau)`, scored 0."""
    if senders is None:
        return kept_candidates, candidate_scores
    dev = kept_candidates.device
    kept = torch.full((n_send,), not removes_edge(0.0, tau), dtype=torch.bool, device=dev)
    scores = torch.zeros(n_send, dtype=torch.float64, device=dev)
    kept[senders], scores[senders] = kept_candidates, candidate_scores
    return kept, scores


def _settle_unsure(down: Downstream, j: int, plan, margin: float, tau: float, before, after, inc, remove, met_t, per,
                   accepted: int) -> tuple[int, int]:
    """An interpolated round: the first accepted candidate the interpolant cannot place on one
    side of tau (its increase within `margin` of tau) is decided from exact rows of its state
    before and after (the accepted decisions before it are right), written into the round's
    `inc`, `remove`, `met_t` and `per` in place; the round's accepted decisions end there, as at
    a contradicted guess. Returns (decisions accepted, example-forwards spent)."""
    unsure = torch.nonzero((inc[:accepted] - tau).abs() <= margin)
    if unsure.numel() == 0:
        return accepted, 0
    u = int(unsure[0, 0])
    met_u, per_u = down.evaluate(j, torch.stack([before[u], after[u]]), plan)
    inc[u] = met_u[1] - met_u[0]
    remove[u] = removes_edge(inc[u], tau)
    met_t[u], per[u] = met_u[1], per_u[1]
    return u + 1, 2 * per_u.shape[1]
