"""ACDC and exact per-edge ablation scores on the neuron graph, fast and exact.

Definition (design.md, "ACDC, precisely"): receivers in reverse topological order (output
positions ascending, then each hidden layer down to layer 1), for each receiver its senders in
ascending position (or the `order` asked for: `sender_orders`); remove edge e for good if metric(H without e) - metric(H) < tau, else restore
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
  that contradicts its guess (its own state was correct). Every accepted decision is computed
  against exactly the state the sequential definition would have, so the circuit is the same;
  guessing only affects speed.
- Guesses come from a per-example quadratic model of the metric in the receiver's pre-activation
  (`_metric_model`: the metric is a mean over examples of terms that each depend on that
  example's value only, so two probe rows give every candidate's predicted increase,
  interactions between the window's removals included; `_guess` finds the sequential guesses by
  whole-window sweeps). Probes are taken at a receiver's start and, after a round whose guesses
  were contradicted, at the next round that has candidates without a measured decision (the
  tail of a contradicted round is guessed from its measurements, and often ends the receiver:
  a model made at once then went unused); for receivers that feed the outputs themselves (the last two
  layers) the model's derivatives are closed-form (`_Downstream.derivatives`) and cost no rows,
  and an output receiver under KL is predicted exactly (`_ExactOutput`: one round per receiver
  however much its removals interact; on a modular-addition net its 7 rounds a receiver went).
  A round is not cut at candidates predicted close to tau: on dense
  nets the rounds (a fixed cost of op dispatch each), not the rows, are what takes the time.
- The current circuit's per-example metric terms are kept (`terms`), so a round evaluates only
  its candidates' rows (no row for the current state), and silent candidates (below) are decided
  without any row: ~1.2 rows per candidate on a dense vanilla digits net (the rest are the tails
  of contradicted rounds, evaluated again). A receiver's final
  terms, as its round evaluated them, stay the circuit's terms after it is committed (no
  recomputation). A round's decisions are read off its rows in one pass of tensor ops
  (`_measure_round`), not in a Python loop over candidates.
- On a CPU, a receiver with many candidates whose rows pass a hidden layer (a digits net's
  first layer: 64 candidates, a 784-input net's: 784, each row a SiLU over 200 neurons per
  example) is decided on an interpolant of its terms instead (`_Interpolant`, `_interpolates`):
  while j's edges are decided, example n's term is a smooth function of z_j[n] alone, so exact
  rows at 17-129 Chebyshev nodes of an interval that holds the states the receiver will be tried
  at give every candidate's terms to rounding (~1e-15); a candidate then costs a recurrence, not
  a pass through the layers. The interval: where the first round holds every candidate, the
  states its guesses reach (narrow: 17 nodes on digits, where ~95% of first-layer receivers take
  one round); else, or once a later round leaves it, every state the remaining candidates can
  reach (wide: 33-129 nodes). A candidate whose increase is within the interpolant's error
  estimate of tau is decided from its exact rows, so decisions are the naive ones (an estimate
  of the error, not a proof: below it, decisions are rounding in any implementation) and scores
  agree with exact rows to ~6e-15 on a dense digits net; the receiver's final terms are the
  interpolant's (an exact row for them cost a tenth of that net's first layer, and scores moved
  by <= 3e-15 without it).
- Rows are pushed through the downstream layers in tiles whose intermediates are written in
  place into reused buffers (no allocation in the hot loop: fresh multi-MiB tensors cost page
  faults), neuron-major ([neurons, rows, examples]) so that each layer is one `W @ h` matmul
  with the long dimension last; on a GPU the tiles are large. The circuit's state is kept
  neuron-major too ([neurons, examples]), so that a receiver's plan and commit read and write
  the positions it reaches as rows. Everything runs on the problem's device (`Problem.to`);
  results come back on the CPU.
- Outputs are evaluated shifted by a per-example constant the metric defines
  (`Metric.per_example_shifted_t`: KL's full-model top logit, MSE's full-model outputs), folded
  into the constant the last downstream step adds anyway, which saves a pass over the outputs;
  for a receiver of the last hidden layer the outputs move by the rank-one dh * w, so KL's
  <p_full, u> is a scalar update per example and two more passes go. exp runs as exp2 (twice as
  fast in torch on a CPU) and a term's overflow is detected with one reduction. On a dense net
  the last hidden layer's rows are 10 outputs wide, so these passes, not matmuls, are its cost.
  Only the outputs a receiver can move (live paths) are evaluated; the others add a per-example
  constant to the terms (`Metric.rest_t`): an output receiver's rows are one output wide.
- A candidate whose delta is exactly zero on an example leaves that example's term as it was,
  so only the other (candidate, example) pairs are pushed downstream (`chain_terms`), when few
  enough move to pay for the gathers a pair costs (`PAIRS_MAX_FRACTION`; on digits, where a
  clean/corrupted pair shares blank pixels, ~60% of a first hidden layer's pairs move: too many).
- The scorers run under `torch.inference_mode` (`_without_autograd`; the naive ones too): on
  dense nets ACDC's time is mostly op dispatch, and autograd's bookkeeping was ~15% of it.
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

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from circuitry.workers.graph import LOG2_E, Problem
from circuitry.workers.names import CHEB_MIN_CANDIDATES, CHEB_NODES, ORDERS

# Largest speculation window (candidates evaluated in one round), in float64 elements of the widest
# downstream activation; the work itself runs in cache-sized tiles, so this bounds only the
# [window, N] rows of receiver states (and how much a wrong guess can waste).
BATCH_ELEMENTS = 1 << 26
# Tile of candidate rows evaluated at once, in elements of the widest downstream activation: on a
# CPU small enough (2^18 float64 = 2 MiB) that a tile's intermediates stay in cache and can be
# overwritten in place; on a GPU large, so that each kernel launch carries enough work. 2^18, not
# 2^19: two processes scoring side by side (chunks of `exact` on 2 workers) share the L3 cache,
# and with 4 MiB tiles a 2-1024-1024-2 job on 2 workers took 1.30-1.35 s, with 2 MiB 1.22 s
# (alone: that net's one pass 1-2% faster, a dense digits net's 1-3% slower, interleaved)
TILE_ELEMENTS = {"cpu": 1 << 18}
TILE_ELEMENTS_OTHER = 1 << 25
# A tile also holds a few [rows, examples] tensors of its own (the candidates' values, dh, <p, u>,
# the terms), counted as this many neurons: on a net whose outputs are 2 wide they are most of the
# tile (uncounted, a 2-1536-1536-2 net's last hidden layer scored 21% slower, interleaved runs)
TILE_ROW_TENSORS = 4
# `chain_terms` evaluates only the (candidate, example) pairs that move when at most this fraction
# does (the break-even measured on a dense digits net, 2-core EPYC: 40-45%)
PAIRS_MAX_FRACTION = 0.4
# A receiver whose rows pass through a hidden layer and that has at least CHEB_MIN_CANDIDATES
# non-silent candidates is decided on an interpolant of its terms (`_Interpolant`): Chebyshev
# nodes tried in turn, accepted when the last coefficients are below CHEB_TOLERANCE of the terms.
# CHEB_NODES and CHEB_MIN_CANDIDATES (workers.names): twice the fewest nodes; a digits net's first
# layer (56 candidates a receiver) scored 10% faster in ACDC and 2.5x faster in `exact` than on rows
CHEB_TOLERANCE = 1e-13


def _without_autograd(scorer):
    """Run a scorer under `torch.inference_mode` and hand back ordinary tensors (copies: an
    inference-mode tensor cannot be changed in place or take part in autograd outside the mode).
    The mode drops autograd's bookkeeping from every op: on dense nets ACDC is mostly op dispatch,
    and a dense digits net's ran ~15% faster (the naive loop, mostly arithmetic, ~4%); both
    implementations run under it, so their comparison stays like for like."""
    def ordinary(x):
        if isinstance(x, torch.Tensor):
            return x.clone()
        if isinstance(x, (list, tuple)):
            return type(x)(ordinary(t) for t in x)
        if isinstance(x, EdgeResult):
            return replace(x, masks=ordinary(x.masks), scores=ordinary(x.scores))
        return x

    @functools.wraps(scorer)
    def run(*args, **kwargs):
        with torch.inference_mode():
            out = scorer(*args, **kwargs)
        return ordinary(out)
    return run


@dataclass
class EdgeResult:
    masks: list[torch.Tensor]  # bool, one per weight matrix, True = kept
    scores: list[torch.Tensor]  # float64, same shapes, see score semantics above
    forward_examples: int  # example-forwards spent (a partial downstream pass counts as one)
    edges_tested: int | None = None  # acdc: candidates tried (edges into receivers that reach the metric)


def _full_state(problem: Problem) -> tuple[list, list]:
    """The full model's pre-activations z (None for the inputs) and activations h per layer, as new
    tensors, neuron-major ([n_l, N]): a receiver's plan and commit read and write the positions
    it reaches, rows here (a row gather is a copy; a column gather of an example-major state
    cost a dense digits net's first layer ~10% of its time)."""
    g = problem.graph
    h = [a.T.contiguous() for a in problem.clean]
    return [None] + [g.weights[l] @ h[l] + g.biases[l][:, None] for l in range(g.n_layers)], h


def _terms(metric, ut: torch.Tensor, scratch=None, pu=None, p_t=None, rest=None, log2=False) -> torch.Tensor:
    """Per-example metric terms of outputs ut [n_out, ..., N], output-major and shifted by
    metric.shift_t where the metric defines one (`Metric.per_example_shifted_t`; there ut may
    hold only some outputs, `p_t` their rows of p and `rest` the others' `Metric.rest_t`)."""
    if metric.shift_t is None:
        return metric.per_example_t(ut, scratch=scratch)
    return metric.per_example_shifted_t(ut, scratch=scratch, pu=pu, p_t=p_t, rest=rest, log2=log2)


def _current_terms(metric, y_t: torch.Tensor) -> torch.Tensor:
    """The per-example terms of the circuit whose outputs are y_t [n_out, N], by the same
    formula as a candidate row's (so that increases compare like with like)."""
    return _terms(metric, y_t if metric.shift_t is None else y_t - metric.shift_t)


@dataclass
class _Plan:
    """What `_Downstream` needs to evaluate receiver j's candidates (see `_Downstream.plan`)."""
    steps: list  # per downstream layer: (positions, live weights, constant neuron-major [positions, N])
    u_now_t: torch.Tensor  # the circuit's shifted outputs now, output-major [n_out, N]
    pu: tuple | None = None  # rank-one KL outputs: (<p, u> of the constant part, <p, w>) per example, [N] each
    # where the metric has a shifted form, only the outputs j can move are evaluated: their rows
    # of p (KL) and the others' constant contribution (`Metric.rest_t`; None when all can move)
    p_t: torch.Tensor | None = None
    rest: tuple | None = None
    tile: int = 1  # candidate rows per tile: the tile budget over the plan's widest step (a pruned net's are narrow)
    # KL outputs are evaluated in log2 units (`Metric.per_example_shifted_t`'s log2): `steps` as
    # evaluated, with the last step's weights and constants times log2(e) (`steps` stay as they are
    # for `commit`)
    log2: bool = False
    eval_steps: list | None = None
    by_example: list | None = None  # (`constants_by_example`)
    # for a tile: the receiver's clean activation [N], the first evaluated step's weights [n, 1, 1]
    # and every evaluated step's constant [n, 1, N], shaped once a plan, not once a tile
    h_j: torch.Tensor | None = None
    tile_w0: torch.Tensor | None = None
    tile_consts: list | None = None

    def constants_by_example(self) -> list:
        """Each evaluated step's constant example-major ([N, positions]), made when first asked:
        `Downstream.evaluate_pairs` gathers examples from it (a row gather is a copy, a column
        gather is slow), and only receivers evaluated in pairs ask."""
        if self.by_example is None:
            self.by_example = [step[2].T.contiguous() for step in self.eval_steps]
        return self.by_example


class _Downstream:
    """The current circuit's state at layers >= m (receivers of layer m under test) and a batched
    evaluator of the metric for new values of one receiver's pre-activation. The state, z and h,
    is neuron-major ([n_l, N] a layer: `_full_state`) and changed in place by `commit`.

    Outputs are evaluated shifted (u = y - metric.shift_t, folded into the constant that the last
    step adds anyway: `Metric.per_example_shifted_t`); with the metric's shift undefined (one
    output of a KL) the shift is 0 and the plain terms are used."""

    def __init__(self, problem: Problem, masks, m: int, z, h, batch_elements: int):
        g = problem.graph
        self.p, self.m, self.z, self.h, self.L = problem, m, z, h, g.n_layers
        self.device = h[0].device
        self.metric = problem.metric
        shift = self.metric.shift_t
        self.shift_t = torch.zeros(1, problem.n_examples, dtype=torch.float64, device=self.device) if shift is None \
            else shift
        # live = kept and non-zero: a zero weight carries no change, so it cannot extend a path
        self.live = {l: masks[l] & (g.weights[l] != 0) for l in range(m, self.L)}
        self.wlive = {l: g.weights[l] * self.live[l] for l in range(m, self.L)}
        co = problem.metric.relevant_outputs(g.shape[-1]).to(self.device)
        self.co = {self.L: co}
        for l in range(self.L - 1, m - 1, -1):
            co = (self.live[l] & co[:, None]).any(0)
            self.co[l] = co
        self.co_list = self.co[m].tolist()  # one transfer, not one per receiver
        # a candidate row holds [N, width] tensors of every downstream layer at once
        widest = max(g.shape[m + 1:]) if m < self.L else g.shape[-1]
        self.chunk = max(1, batch_elements // (problem.n_examples * widest) - 1)
        self.tile_elements = TILE_ELEMENTS.get(self.device.type, TILE_ELEMENTS_OTHER)
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._views: dict[tuple, torch.Tensor] = {}
        # receivers that feed the outputs themselves have closed-form metric derivatives (`derivatives`)
        self.closed_form = m >= self.L - 1 and self.metric.shift_t is not None

    def reaches_metric(self, j: int) -> bool:
        return self.co_list[j]

    def terms(self, ut: torch.Tensor, metric=None, scratch=None, pu=None, p_t=None, rest=None,
              log2=False) -> torch.Tensor:
        """Per-example metric terms of shifted outputs ut [n_out, ..., N] (`_terms`)."""
        return _terms(metric or self.metric, ut, scratch, pu, p_t, rest, log2)

    def shift(self, r) -> torch.Tensor:
        """The metric's shift of output positions r (one row, broadcast, when it is the same for all)."""
        return self.shift_t if self.shift_t.shape[0] == 1 else self.shift_t[r]

    def plan(self, j: int) -> _Plan:
        """Per downstream layer: the reached positions (a slice when all are reached, which
        avoids gathers), the live weights between them and the constant part of the next
        pre-activation (the last one minus the metric's shift), neuron-major."""
        g, L = self.p.graph, self.L
        u_now_t = self.h[L] - self.shift_t
        if self.m == L:
            return self._finish(_Plan([], u_now_t), torch.tensor([j], device=self.device))

        def positions(reached: torch.Tensor, layer: int):
            idx = torch.nonzero(reached)[:, 0]
            return slice(None) if idx.numel() == g.shape[layer] else idx

        def shifted(const_t, layer, r):  # the output layer's constant carries the shift
            return const_t - self.shift(r) if layer == L else const_t

        r = positions(self.live[self.m][:, j] & self.co[self.m + 1], self.m + 1)
        # z_{m+1} = z_now + dh_j * w: rank one, only j's live out-edges move. Tiles are evaluated
        # neuron-major ([neurons, rows, examples]: `w @ h` with the long rows*examples dimension
        # last is the fast shape of a skinny matmul), as the state and the constants are stored
        base_t = shifted(self.z[self.m + 1][r], self.m + 1, r).contiguous()
        w = self.wlive[self.m][r, j].contiguous()
        steps = [(r, w, base_t)]
        pu = None
        if self.m + 1 == L and self.metric.kind == "kl" and self.metric.shift_t is not None:
            # the outputs move by dh * w: <p, u> = <p, u_now> + dh <p, w>, one scalar per example
            # (u_now: base_t on the moving outputs, the others as they are)
            p_t = self.metric.p_full_t
            pu = ((p_t * u_now_t).sum(0), (p_t[r] * w[:, None]).sum(0))
        for l in range(self.m + 1, L):
            r_next = positions(self.live[l][:, r].any(1) & self.co[l + 1], l + 1)
            w = self.wlive[l][r_next][:, r]
            # z_next = w @ h_new + (z_next_now - w @ h_now): one matmul and one add per row
            offset_t = shifted(self.z[l + 1][r_next] - w @ self.h[l][r], l + 1, r_next).contiguous()
            steps.append((r_next, w.contiguous(), offset_t))
            r = r_next
        return self._finish(_Plan(steps, u_now_t, pu, h_j=self.h[self.m][j]), r)

    def derivatives(self, j: int, zj: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """First and second derivatives (divided by N) of each example's metric term in receiver
        j's pre-activation, at zj [N], in closed form (only where `closed_form`: the receiver feeds
        the outputs itself, m >= L-1, and the metric has a shifted form): what `_metric_model`
        gets from two probe rows, without the rows. u are the shifted outputs, w the receiver's live
        weights into them, s', s'' SiLU's derivatives: KL's term is logsumexp(u) - <p, u> + const,
        so t' = <q - p, w> s' and t'' = (<q, w^2> - <q, w>^2) s'^2 + <q - p, w> s'' (q = softmax(u));
        MSE's is mean_c u_c^2, so t' = 2 <u, w> s' / n_out and t'' = 2 (|w|^2 s'^2 + <u, w> s'') / n_out."""
        metric, L = self.metric, self.L
        n_out = self.p.graph.shape[-1]
        w = torch.zeros(n_out, dtype=torch.float64, device=self.device)
        u = plan.u_now_t.clone()
        n = zj.shape[0]
        if self.m == L:  # an output: the identity
            w[j] = 1.0
            u[j] = zj - self.shift(j).view(-1)
            s1, s2 = None, None
        else:
            r, wr = plan.steps[0][:2]
            w[r] = wr
            sig = torch.sigmoid(zj)
            u.addcmul_(w[:, None], torch.mul(zj, sig).sub_(plan.h_j)[None])  # silu(z) = z sig(z)
            one_z = torch.mul(zj, 1 - sig).add_(1)  # 1 + z (1 - sig)
            s1 = sig * one_z
            s2 = (sig - sig * sig).mul_(one_z.mul_(2).sub_(zj))  # sig (1 - sig) (2 + z (1 - 2 sig))
        if metric.kind == "kl":  # <q - p, w> and <q, w^2> - <q, w>^2, as products with w
            q = torch.softmax(u, 0)
            qw = w @ q
            a = qw - w @ metric.p_full_t
            b = (w * w) @ q - qw * qw
        else:
            a = (w @ u).mul_(2 / n_out)
            b = (w @ w) * (2 / n_out)
        if s1 is None:
            return a / n, (b / n).expand_as(a)
        return (a * s1).div_(n), (b * s1 * s1).addcmul_(a, s2).div_(n)

    def exact_output(self, j: int, plan: _Plan):
        """For an output receiver under KL (with its shifted form): a maker of exact predictions,
        (state [N], deltas [B, N]) -> `_ExactOutput`; else None."""
        if self.m != self.L or not plan.log2:
            return None
        shift = self.shift(j).view(-1)
        log_rest = plan.rest[0][0].log()
        p = self.metric.p_full_t[j]
        return lambda state, deltas: _ExactOutput(state - shift, log_rest, p, deltas)

    def _finish(self, plan: _Plan, r) -> _Plan:
        """Size the plan's tiles by its widest step (a pruned net's are narrow: fewer, larger
        tiles) and the tile's own row tensors (`TILE_ROW_TENSORS`), and evaluate only the outputs
        r that the receiver can move (a slice: all of them): the others add a per-example
        constant to the metric's terms (`Metric.rest_t`), so they need no copy, no exp and no
        product per row. Only for metrics with a shifted form."""
        g = self.p.graph
        widths = [g.shape[-1]] + [g.shape[l] if isinstance(step[0], slice) else step[0].numel()
                                  for step, l in zip(plan.steps, range(self.m + 1, self.L + 1))]
        plan.tile = max(1, self.tile_elements // (self.p.n_examples * (max(widths) + TILE_ROW_TENSORS)))
        plan.eval_steps = plan.steps
        if self.metric.kind == "kl" and self.metric.shift_t is not None:
            plan.log2 = True
            if plan.steps:
                r_out, *last = plan.steps[-1]
                plan.eval_steps = plan.steps[:-1] + [(r_out, *(t * LOG2_E for t in last))]
        if plan.steps:
            plan.tile_w0 = plan.eval_steps[0][1][:, None, None]
            plan.tile_consts = [step[2][:, None] for step in plan.eval_steps]
        if self.metric.shift_t is None or isinstance(r, slice):
            return plan
        plan.rest = self.metric.rest_t(plan.u_now_t, r)
        if self.metric.kind == "kl":
            plan.p_t = self.metric.p_full_t[r]
        return plan

    def _buffer(self, key, shape) -> torch.Tensor:
        """A reusable scratch tensor (a tile's intermediates are written in place into these, so
        the hot loop allocates nothing and its working set stays in cache). Views are kept by
        shape: a dense net asks for the same few shapes hundreds of times, and making a view is
        two tensor ops."""
        view = self._views.get((key, tuple(shape)))
        if view is not None:
            return view
        n = math.prod(shape)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=torch.float64, device=self.device)
            self._buffers[key] = buf
            self._views = {k: v for k, v in self._views.items() if k[0] != key}  # views of the old one
        view = self._views[key, tuple(shape)] = buf[:n].view(shape)
        return view

    def _outputs(self, j: int, zc: torch.Tensor, plan: _Plan, examples=None):
        """The circuit's shifted outputs, output-major [n_out, T, N], for a tile of candidate
        pre-activations zc [T, N] of receiver j, and <p, u> where the plan knows it cheaply (else
        None); with `examples` ([N] indices), column k of zc is example examples[k]. May return a
        scratch buffer (use it before the next call)."""
        m, L, h = self.m, self.L, self.h
        T, N = zc.shape
        pick = (lambda t: t) if examples is None else (lambda t: t.index_select(-1, examples))  # noqa: E731
        if m == L:
            if plan.rest is not None:  # one output moves: evaluated alone
                u = zc - pick(self.shift(j).view(-1))
                return (u.mul_(LOG2_E) if plan.log2 else u)[None], None
            y = self._buffer("y", (h[L].shape[0], T, N))
            y.copy_(pick(plan.u_now_t)[:, None])
            y[j] = zc - pick(self.shift(j).view(-1))
            return y, None
        # a step's constant for the tile's examples, [n, 1, N] (pairs: a row gather, then a view)
        const = plan.tile_consts.__getitem__ if examples is None else (  # noqa: E731
            lambda k, by_example=plan.constants_by_example(): by_example[k].index_select(0, examples).T[:, None])
        dh = F.silu(zc).sub_(pick(plan.h_j))
        steps = plan.eval_steps
        zl = torch.addcmul(const(0), plan.tile_w0, dh, out=self._buffer(0, (steps[0][1].shape[0], T, N)))
        for k in range(1, len(steps)):
            F.silu(zl, inplace=True)
            w = steps[k][1]
            # the buffers' matrix views: a layer is one `W @ h` over the tile's rows and examples
            torch.mm(w, self._buffer(k - 1, (w.shape[1], T * N)), out=self._buffer(k, (w.shape[0], T * N)))
            zl = self._buffer(k, (w.shape[0], T, N)).add_(const(k))
        r = steps[-1][0]
        pu = None if plan.pu is None else torch.addcmul(pick(plan.pu[0]), dh, pick(plan.pu[1]))
        if isinstance(r, slice) or plan.rest is not None:
            return zl, pu
        y = self._buffer("y", (h[L].shape[0], T, N))
        y.copy_(pick(plan.u_now_t)[:, None])
        y[r] = zl
        return y, pu

    def evaluate(self, j: int, zc: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Metric [B] and its per-example terms [B, N] for each candidate pre-activation zc [B, N]
        of receiver j, evaluated tile by tile."""
        B, N = zc.shape
        if B <= plan.tile:  # one tile (most rounds): no copy into `per`
            per = self._tile_terms(j, zc, plan)
            return per.mean(-1), per
        per = torch.empty(B, N, dtype=torch.float64, device=self.device)
        for a in range(0, B, plan.tile):
            per[a:a + plan.tile] = self._tile_terms(j, zc[a:a + plan.tile], plan)
        return per.mean(-1), per

    def _tile_terms(self, j: int, zc: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Per-example terms [T, N] for one tile of candidate pre-activations zc [T, N]."""
        y, pu = self._outputs(j, zc, plan)
        return self.terms(y, scratch=self._buffer("scratch", y.shape), pu=pu, p_t=plan.p_t, rest=plan.rest,
                          log2=plan.log2)

    def evaluate_pairs(self, j: int, values: torch.Tensor, examples: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Per-example metric terms [P] for receiver j's pre-activation set to values[k] on example
        examples[k] alone (the other examples' terms are not needed), in tiles of the same size."""
        out = torch.empty_like(values)
        size = plan.tile * self.p.n_examples
        for a in range(0, values.shape[0], size):
            b = min(values.shape[0], a + size)
            idx = examples[a:b]
            y, pu = self._outputs(j, values[None, a:b], plan, idx)
            p_t = None if plan.p_t is None else plan.p_t.index_select(1, idx)
            rest = None if plan.rest is None else tuple(t.index_select(-1, idx) for t in plan.rest)
            out[a:b] = self.terms(y, self.metric.on_examples(idx), self._buffer("scratch", y.shape), pu, p_t, rest,
                                  plan.log2)[0]
        return out

    def pairs_pay(self, deltas: torch.Tensor) -> bool:
        """Whether `chain_terms` should evaluate only the (candidate, example) pairs that move for a
        receiver with these candidate deltas [K, N]: a pair costs about twice an element of a whole
        row (the gathers), so whole rows win when most pairs move; an output receiver's row costs
        less than the bookkeeping."""
        return self.m < self.L and float((deltas != 0).sum()) <= PAIRS_MAX_FRACTION * deltas.numel()

    def chain_terms(self, j: int, after: torch.Tensor, d: torch.Tensor, removed: torch.Tensor, terms: torch.Tensor,
                    plan: _Plan, pairs: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """`evaluate` for a chain of candidate states: row k is the state before candidate k (the
        earlier rows with `removed` set applied) plus its delta d[k]. Where d[k, n] == 0 exactly,
        row k holds on example n the same value as the state before it, so its term is that
        state's (`terms` for the chain's start, else the row of the last removal that moved example
        n; equal up to the rounding of the chain's running sum, a level at which no decision is
        defined anyway: module doc); only the other (row, example) pairs are pushed downstream.
        Also returns the number of (row, example) pairs evaluated. On digits
        ~40% of a first hidden layer's pairs are such zeros (equal pixels in a clean/corrupted pair)."""
        if not pairs:  # (`pairs_pay`)
            return *self.evaluate(j, after, plan), after.numel()
        moving = d != 0
        B, N = after.shape
        per = torch.empty(B + 1, N, dtype=torch.float64, device=self.device)  # row 0: the chain's start
        per[0] = terms
        k_idx, n_idx = torch.nonzero(moving, as_tuple=True)
        per[k_idx + 1, n_idx] = self.evaluate_pairs(j, after[k_idx, n_idx], n_idx, plan)
        # the state before row k, on example n, is the row of the last removal before k that moved n
        rows = torch.arange(1, B + 1, device=self.device)[:, None]
        last = torch.where(removed[:, None] & moving, rows, 0).cummax(0).values
        source = torch.cat([torch.zeros(1, N, dtype=last.dtype, device=self.device), last[:-1]])
        per[1:] = torch.where(moving, per[1:], per.gather(0, source))
        return per[1:].mean(-1), per[1:], k_idx.numel()

    def commit(self, j: int, zj: torch.Tensor, plan: _Plan) -> None:
        """Write receiver j's final pre-activation zj [N] and everything it moves downstream into
        the circuit's state."""
        m, L, z, h = self.m, self.L, self.z, self.h
        hj = zj if m == L else F.silu(zj)
        dh = hj - h[m][j]
        z[m][j] = zj
        h[m][j] = hj
        if m == L:
            return
        r, w, base_t = plan.steps[0][:3]
        zl = torch.addcmul(base_t, w[:, None], dh[None])
        for k, l in enumerate(range(m + 1, L + 1)):
            if l == L:  # the plan's output constants are shifted
                zl = zl + self.shift(r)
            hl = zl if l == L else F.silu(zl)
            z[l][r] = zl
            h[l][r] = hl
            if l == L:
                return
            r, w, offset_t = plan.steps[k + 1][:3]
            zl = torch.addmm(offset_t, w, hl)


def sender_orders(shape: list[int], order: str = "ascending", seed: int = 0) -> dict[tuple[int, int], torch.Tensor] | None:
    """The order in which ACDC tries each receiver's incoming edges (design.md: "its incoming
    edges in ascending sender position, or the order the spec names"): None for ascending (the
    definition's default), else {(layer m, receiver j): sender positions in visiting order}.
    `random` draws one permutation per receiver, in the visiting order of receivers (output
    layer first), from a generator seeded with `seed` (the discover job's seed), so `acdc` and
    `acdc_naive` see the same orders. Receivers are always visited in the same order."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: choose one of {', '.join(ORDERS)}")
    if order == "ascending":
        return None
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for m in range(len(shape) - 1, 0, -1):
        for j in range(shape[m]):
            n = shape[m - 1]
            out[m, j] = torch.arange(n - 1, -1, -1) if order == "descending" else torch.randperm(n, generator=gen)
    return out


@_without_autograd
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
    z, h = _full_state(problem)
    spent = 2 * N  # the clean and corrupted full forwards
    tested = 0
    removed_when_silent = 0.0 < tau  # a candidate whose increase is exactly 0
    terms = _current_terms(problem.metric, h[L])  # the current circuit's per-example metric terms
    for m in range(L, 0, -1):
        down = _Downstream(problem, masks, m, z, h, batch_elements)
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
            state, terms, kept, row_scores, used = _decide_receiver(down, j, z[m][j].clone(), terms, deltas,
                                                                    silent, tau, plan, progress)
            masks[m - 1][j, senders] = kept
            scores[m - 1][j, senders] = row_scores.cpu()
            spent += used
            if not bool(kept.all()):  # the state moved: write it downstream (N example-forwards)
                down.commit(j, state, plan)  # `terms` are already the new circuit's (as evaluated)
                spent += N
    return EdgeResult([mk.cpu() for mk in masks], scores, spent, tested)


def _next_window(window: int, B: int, accepted: int, chunk: int) -> int:
    """The most candidates to speculate about next (`_guess` may stop earlier, where its sweeps
    disagree): a contradicted guess wastes the rest of its batch, so after one aim at about twice the
    run of correct guesses just seen; an all-correct batch earns a batch twice as large."""
    return min(chunk, 2 * window if accepted == B else max(8, 2 * accepted))


def _metric_model(lo: torch.Tensor, mid: torch.Tensor, hi: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second derivatives, per example, of the metric (divided by N) with respect to the
    receiver's pre-activation, from the per-example terms ([N] each) at state - eps, state and
    state + eps by central differences.

    Each example's metric term depends on the receiver's pre-activation for that example only, so
    the metric is a mean of 1-D functions and this per-example quadratic model predicts the
    increase of any candidate state cheaply. It only makes guesses: every decision is measured."""
    n = lo.shape[0]
    return (hi - lo).div_(eps * (2 * n)), (hi + lo).sub_(mid, alpha=2).div_(eps.square().mul_(n))


class _Interpolant:
    """Each example's metric term as a function of receiver j's pre-activation, interpolated:
    the term of example n depends on z_j[n] alone while j's edges are decided (module doc) and is
    analytic (SiLU, matmuls, log-sum-exp), so its Chebyshev interpolant on C nodes of an interval
    [lo_n, hi_n] reproduces it there to rounding once the coefficients have decayed (the caller
    picks intervals that hold the states it asks about, `covers` checks them). Fitting
    costs C exact rows instead of one per candidate; a candidate then costs a Clenshaw recurrence
    (2 C elementwise ops a row, no downstream layers). `margin` bounds an increase's error: 2 x
    (10 x the last coefficients + 4 ulps of the terms), averaged over examples; an estimate, not
    a proof (the decay of an analytic function's coefficients), and the caller decides every
    candidate within it of tau from exact rows."""

    def __init__(self, coef: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, margin: float):
        self.coef, self.lo, self.hi, self.margin = coef.unbind(), lo, hi, margin
        self.mid, half = (lo + hi) / 2, (hi - lo) / 2
        # the recurrence's argument 2 t = 2 (x - mid) / half, as (x - mid) * scale; a point interval
        # (half 0): t = 0, the constant term
        self.scale = torch.where(half > 0, 2 / half, torch.zeros_like(half))

    @staticmethod
    def fit(down: "_Downstream", j: int, plan: "_Plan", lo: torch.Tensor, hi: torch.Tensor, counts=CHEB_NODES):
        """The interpolant of receiver j's terms on the per-example intervals [lo, hi] ([N] each)
        with the fewest nodes of `counts` that reach the tolerance, and the example-forwards spent;
        (None, spent) when none does."""
        N, spent = lo.shape[0], 0
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        for c in counts:
            nodes, transform = _chebyshev(c, lo.device)
            _, terms = down.evaluate(j, torch.addcmul(mid, half, nodes[:, None]), plan)  # [c, N]
            spent += c * N
            coef = transform @ terms
            size = terms.abs().amax(0)
            tail = coef[-3:].abs().amax(0)
            if bool((tail <= CHEB_TOLERANCE * size.clamp(min=1.0)).all()):
                err = 10 * tail + 4 * torch.finfo(torch.float64).eps * size
                return _Interpolant(coef, lo, hi, 2 * float(err.mean())), spent
        return None, spent

    def covers(self, x: torch.Tensor) -> bool:
        """Whether every state x [..., N] lies in the intervals it was fitted on (outside them a
        Chebyshev series is no interpolant)."""
        return bool(((x >= self.lo) & (x <= self.hi)).all())

    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Metric [B] and per-example terms [B, N] at pre-activations x [B, N] (Clenshaw)."""
        t2 = (x - self.mid).mul_(self.scale)
        c = self.coef
        b1, b2 = c[-1].expand_as(x), 0.0
        for k in range(len(c) - 2, 0, -1):
            b1, b2 = torch.addcmul(c[k] - b2, t2, b1), b1
        per = torch.addcmul(c[0] - b2, t2, b1, value=0.5)
        return per.mean(-1), per


@functools.cache
def _chebyshev(c: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The c Chebyshev nodes of the first kind on [-1, 1] and the matrix that turns values there
    into the coefficients of the interpolant's series (the discrete cosine transform; the constant
    term halved), computed once per size and device."""
    i = torch.arange(c, dtype=torch.float64, device=device)
    transform = torch.cos(math.pi * i[:, None] * (i[None] + 0.5) / c) * (2.0 / c)
    transform[0] /= 2
    return torch.cos(math.pi * (i + 0.5) / c), transform


def _interpolates(down: "_Downstream", candidates: int) -> bool:
    """Whether a receiver is decided on an `_Interpolant`: many candidates whose rows pass a hidden
    layer, on a CPU (on a GPU the rows are cheap and the recurrence's many small kernels are not:
    the 784-input net's ACDC took 5.0 s there on rows, 6.4-7.0 s on interpolants)."""
    return candidates >= CHEB_MIN_CANDIDATES and down.m < down.L - 1 and down.device.type == "cpu"


def _removed_before(deltas: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Row k: the summed deltas [.., N] of the guessed removals g among candidates 0..k-1 (how far
    a chain of removals has moved the receiver when candidate k is tried)."""
    taken = g[:, None] * deltas
    return torch.cumsum(taken, 0).sub_(taken)


def _tried_from(g: torch.Tensor) -> torch.Tensor:
    """Per candidate k of a chain with guessed removals g [B]: where the state it is tried from was
    evaluated, as an index into [the chain's start, row 0, row 1, ...]: the row of the last
    guessed removal before k, plus one, or 0 (none)."""
    removal_before = F.pad(g[:-1], (1, 0))  # row k - 1 was a guessed removal
    return torch.where(removal_before, torch.arange(g.shape[0], device=g.device), 0).cummax(0).values


class _Quadratic:
    """Predicted increases from the per-example quadratic model (d1, d2) of `_metric_model`, taken
    `shift` [N] away from the window's start state: pred_k = own_k + <deltas_k * d2, the summed
    deltas of the earlier guessed removals>."""

    def __init__(self, model, shift: torch.Tensor, deltas: torch.Tensor):
        d1, d2 = model
        self.own = deltas @ (d1 + d2 * shift) + 0.5 * (deltas * deltas) @ d2
        self.curv, self.deltas = deltas * d2, deltas

    def __call__(self, g: torch.Tensor | None, first: int = 0) -> torch.Tensor:
        if g is None:
            return self.own[first:]
        moved = _removed_before(self.deltas, g)[first:]
        return (self.curv[first:] * moved).sum(1).add_(self.own[first:])


class _ExactOutput:
    """Predicted increases for an output receiver j under KL, exact: each example's term is
    logaddexp(u, log R) - p_j u + const in its shifted logit u (R: the other outputs' sum of exp,
    which stay as they are), so the chain's states are evaluated for the cost of a few ops per
    element, and the guesses are the sequential decisions themselves (up to rounding) once the
    sweeps agree: an output receiver takes one round, however much its removals interact."""

    def __init__(self, u0: torch.Tensor, log_rest: torch.Tensor, p: torch.Tensor, deltas: torch.Tensor):
        self.u0, self.log_rest, self.p, self.deltas = u0, log_rest, p, deltas

    def _terms(self, u):
        return torch.logaddexp(u, self.log_rest) - self.p * u

    def __call__(self, g: torch.Tensor | None, first: int = 0) -> torch.Tensor:
        d = self.deltas[first:]
        u = self.u0 if g is None else self.u0 + g[:first].to(d.dtype) @ self.deltas[:first]  # the state before `first`
        if g is None:
            return self._terms(u + d).mean(1) - self._terms(u).mean()
        met_after = self._terms(_removed_before(d, g[first:]).add_(u).add_(d)).mean(1)
        # the state candidate k is tried from is the one after the last guessed removal before it
        # (or u), whose metric is already at hand: one pass of logaddexp a sweep, not two
        met = torch.cat([self._terms(u).mean().view(1), met_after])
        return met_after - met[_tried_from(g[first:])]


def _guess(predict, tau: float, has_known: torch.Tensor, known: torch.Tensor,
           sweeps: int = 4) -> tuple[torch.Tensor, int]:
    """Sequential guesses (bool [B]) for a window of B candidates: `predict(g, first)` gives the
    predicted increases of candidates first.. when the earlier candidates' removals are `g` (None:
    none of them; `_Quadratic`, `_ExactOutput`). `known` holds decisions measured earlier (where
    `has_known`). Also returns how many candidates to evaluate (the agreed prefix, below). The
    window is not cut at predictions close to tau: a wrong guess there costs the rest of the
    window's rows, but a cut costs a round for every near-tau candidate, and rounds (a fixed
    cost of op dispatch each) are what dense nets spend their time on.

    The sequential guesses g_k = [pred_k(g_<k) < tau] are found by sweeps of window tensor ops:
    each sweep recomputes the predictions from the previous sweep's guesses, and the prefix on
    which two sweeps agree is exactly the sequential answer (g_0 is right after one sweep, and
    each g_k is right once the guesses before it are), so a sweep starts where that prefix ends
    (an output receiver's exact sweeps, ~10 a window on a dense digits net, cost a quarter less);
    the window is cut there. (The quadratic model's interactions as one [B, B] matrix, a sweep as
    a matrix-vector product, is fewer ops but more arithmetic: no faster on a dense digits net.)"""
    B = known.shape[0]
    g = torch.where(has_known, known, predict(None) < tau)
    agreed = 0  # the guesses before this are the sequential answer
    for _ in range(sweeps):
        tail = torch.where(has_known[agreed:], known[agreed:], predict(g, agreed) < tau)
        diff = torch.nonzero(tail != g[agreed:])
        g[agreed:] = tail
        if diff.numel() == 0:
            return g, B
        agreed += int(diff[0, 0]) + 1  # the new guesses are right up to and including their first change
    return g[:agreed], agreed


def _measure_round(met: torch.Tensor, g: torch.Tensor, met_now: float, tau: float):
    """The decisions a round's metrics `met` [B] imply, in one pass of tensor ops: row k was
    evaluated at the chain state with the guessed removals `g` before it, so its increase is
    measured against the row of the last guessed removal before k (or `met_now`, the metric at the
    chain's start). Returns the increases [B], the measured removals [B] (exact up to and including
    the first one that contradicts its guess, the next round's guesses after it), how many
    decisions are exact (B when no guess was contradicted) and whether a guess was."""
    B = met.shape[0]
    inc = met - torch.cat([met.new_tensor([met_now]), met])[_tried_from(g)]
    remove = inc < tau
    wrong = torch.nonzero(remove != g)
    if wrong.numel() == 0:
        return inc, remove, B, False
    return inc, remove, int(wrong[0, 0]) + 1, True


def _decide_receiver(down: _Downstream, j, state, terms, deltas, silent, tau, plan, progress):
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

    def per_sender(kept_candidates, candidate_scores):  # the silent ones: removed where 0 < tau, score 0
        if senders is None:
            return kept_candidates, candidate_scores
        kept = torch.full((n_send,), not (0.0 < tau), dtype=torch.bool, device=dev)
        scores = torch.zeros(n_send, dtype=torch.float64, device=dev)
        kept[senders], scores[senders] = kept_candidates, candidate_scores
        return kept, scores

    K = deltas.shape[0]
    if K == 0:
        return state, terms, *per_sender(deltas.new_zeros(0, dtype=torch.bool), deltas.new_zeros(0)), 0
    # guesses come from a quadratic model of the metric around a recent state (probes at +-eps
    # beside it, made again at the next round that needs it after one whose guesses were
    # contradicted), or from a measurement made in an earlier round at a slightly different state
    # (the tail of a batch after its first wrong guess); an output receiver under KL is predicted
    # exactly instead (`_ExactOutput`). `known`: the measured decisions, candidates before
    # `measured_to` (exact before `start`, the next guesses after it); at the end, the decisions
    known = torch.zeros(K, dtype=torch.bool, device=dev)
    scores_all = torch.zeros(K, dtype=torch.float64, device=dev)
    # finite-difference step per example: the typical size of the candidates' deltas (probes only)
    eps = None
    if not down.closed_form:
        eps = torch.linalg.vector_norm(deltas, dim=0).mul_(K ** -0.5)
        eps.masked_fill_(eps == 0, 1.0)

    # many candidates whose rows pass a hidden layer: their terms from an interpolant (`_Interpolant`),
    # fitted on the states a round's guesses reach (refitted when a later round leaves them)
    interpolating, interp, covers_all, spent = _interpolates(down, K), None, False, 0
    pairs = not interpolating and down.pairs_pay(deltas)

    def probes(state):  # two rows at +-eps (from the interpolant where it covers them), or the derivatives
        if down.closed_form:
            return down.derivatives(j, state, plan), 0
        at = torch.stack([state - eps, state + eps])
        if interp is not None and interp.covers(at):
            return interp.evaluate(at)[1], 0
        return down.evaluate(j, at, plan)[1], 2 * N

    def model_at(terms, rows):
        return rows if down.closed_form else _metric_model(rows[0], terms, rows[1], eps)

    exact = down.exact_output(j, plan)
    model, model_state = None, state  # the quadratic model, made when a round first needs it
    met_now = float(terms.mean())
    start, window, measured_to = 0, down.chunk, 0
    while start < K:
        B = min(K - start, window)
        window_known = known[start:start + B]
        if exact is not None:  # exact predictions: better than a measurement at another state
            g, B = _guess(exact(state, deltas[start:start + B]), tau, torch.zeros_like(window_known), window_known,
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
            g, B = _guess(_Quadratic(model, state - model_state, deltas[start:start + B]), tau, measured,
                          window_known)
        d = deltas[start:start + B]
        before = _removed_before(d, g).add_(state)  # the state each candidate is tried from
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
            interp, used = _Interpolant.fit(down, j, plan, lo, hi, counts)
            spent += used
            interpolating = interp is not None
            if not interpolating:  # no interpolant reaches the tolerance: exact rows, whole or in pairs
                pairs = down.pairs_pay(deltas)
        if interp is None:
            met_t, per, evaluated = down.chain_terms(j, after, d, g, terms, plan, pairs)
            spent += evaluated
        else:
            met_t, per = interp.evaluate(after)
        inc, remove, accepted, contradicted = _measure_round(met_t, g, met_now, tau)
        if interp is not None:
            # a candidate the interpolant cannot place on one side of tau is decided from exact
            # rows (its state before and after: the accepted decisions before it are right); the
            # round stops there, as at a contradicted guess
            unsure = torch.nonzero((inc[:accepted] - tau).abs() <= interp.margin)
            if unsure.numel():
                u = int(unsure[0, 0])
                met_u, per_u = down.evaluate(j, torch.stack([before[u], after[u]]), plan)
                spent += 2 * N
                inc[u] = met_u[1] - met_u[0]
                remove[u] = inc[u] < tau
                met_t[u], per[u] = met_u[1], per_u[1]
                accepted = u + 1
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
        window = _next_window(window, B, accepted, down.chunk)
        if progress:
            progress(accepted)
    return state, terms, *per_sender(~known, scores_all), spent


@_without_autograd
def exact_scores(problem: Problem, start: int = 0, stop: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 batch_elements: int = BATCH_ELEMENTS) -> tuple[torch.Tensor, int]:
    """metric(full model with only edge e ablated) - metric(full model) (= 0) for the edges
    [start, stop) of the canonical order; returns (float64 scores, example-forwards spent).

    Each receiver's candidates are always evaluated in the same fixed batches (aligned to the
    receiver, never to start/stop), and an interpolated receiver (`_Interpolant`, fitted on all its
    candidates) gives the same interpolant in every chunk, so any chunking of the edge list gives
    identical bits."""
    g = problem.graph
    offsets = g.edge_offsets()
    stop = offsets[-1] if stop is None else stop
    if not 0 <= start <= stop <= offsets[-1]:
        raise ValueError(f"edge slice [{start}, {stop}) outside 0..{offsets[-1]}")
    out = torch.zeros(stop - start, dtype=torch.float64)  # on the CPU, like acdc's results
    N, spent = problem.n_examples, 0
    z, h = _full_state(problem)
    masks = g.full_masks()  # on the problem's device
    for layer in range(g.n_layers):
        lo, hi = max(start, offsets[layer]), min(stop, offsets[layer + 1])
        if lo >= hi:
            continue
        n_send = g.shape[layer]
        down = _Downstream(problem, masks, layer + 1, z, h, batch_elements)
        chunk = down.chunk
        diff_all = problem.ablated[layer] - problem.clean[layer]
        for j in range((lo - offsets[layer]) // n_send, (hi - 1 - offsets[layer]) // n_send + 1):
            base = offsets[layer] + j * n_send
            scores = torch.zeros(n_send, dtype=torch.float64, device=problem.device)
            if down.reaches_metric(j):
                plan = down.plan(j)
                deltas = g.weights[layer][j][:, None] * diff_all.T
                silent = (deltas == 0).all(1)
                interp = None  # as in acdc: many candidates whose rows pass a hidden layer (`_Interpolant`)
                if _interpolates(down, n_send):
                    zj = z[layer + 1][j]  # each candidate alone: states zj + one delta
                    interp, used = _Interpolant.fit(down, j, plan, zj + deltas.amin(0).clamp(max=0),
                                                    zj + deltas.amax(0).clamp(min=0))
                    spent += used
                for c in range(0, n_send, chunk):
                    if interp is not None:
                        scores[c:c + chunk] = interp.evaluate(z[layer + 1][j] + deltas[c:c + chunk])[0]
                        continue
                    rows = z[layer + 1][j] + deltas[c:c + chunk]
                    met, _ = down.evaluate(j, rows, plan)
                    scores[c:c + chunk] = met
                    spent += rows.shape[0] * N
                scores[silent] = 0.0
            a, b = max(lo, base), min(hi, base + n_send)
            out[a - start:b - start] = scores[a - base:b - base].cpu()
            if progress:
                progress(b - a)
    return out, spent


@_without_autograd
def acdc_naive(problem: Problem, tau: float, max_edges: int | None = None, order: str = "ascending",
               seed: int = 0) -> EdgeResult:
    """The sequential definition, literally: one full masked forward per candidate edge.
    `max_edges` stops after that many candidates (a prefix of the visiting order, for timing);
    edges not reached stay kept with score 0. `order`/`seed`: the sender order (`sender_orders`)."""
    g = problem.graph
    orders = sender_orders(g.shape, order, seed)
    masks = g.full_masks()
    scores = [torch.zeros_like(w) for w in g.weights]
    current = problem.circuit_metric(masks)
    spent, tried = problem.n_examples, 0
    for m in range(g.n_layers, 0, -1):
        for j in range(g.shape[m]):
            for i in (range(g.shape[m - 1]) if orders is None else orders[m, j].tolist()):
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


@_without_autograd
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
