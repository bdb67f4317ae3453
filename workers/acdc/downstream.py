"""The downstream evaluator: the metric for new values of one receiver's pre-activation.

Why ACDC can evaluate a candidate edge without a full forward (`speculate.acdc` uses this):
- While receivers of layer m are processed, every edge into layers < m is still live, so the
  senders hold the full model's clean activations and nothing upstream needs recomputing.
- Removing edge i -> j changes only receiver j's pre-activation, by W[j,i] * (h_abl_i - h_i). Its
  effect reaches the metric only through neurons reachable from j along live, non-zero edges that
  can themselves reach the metric's outputs (masks of layers >= m are already final), so only that
  sub-network is recomputed (`Downstream.plan`); if j has no such path, every candidate's increase
  is exactly 0, as in the naive definition (its forward is unchanged bit for bit).
- Rows are pushed through the downstream layers in tiles whose intermediates are written in
  place into reused buffers (no allocation in the hot loop: fresh multi-MiB tensors cost page
  faults), neuron-major ([neurons, rows, examples]) so that each layer is one `W @ h` matmul
  with the long dimension last; on a GPU the tiles are large. The circuit's state is kept
  neuron-major too ([neurons, examples]), so that a receiver's plan and commit read and write
  the positions it reaches as rows. Everything runs on the problem's device (`Problem.to`).
- Outputs are evaluated shifted by a per-example constant the metric defines
  (`Metric.per_example_shifted_t`: KL's full-model top logit, MSE's full-model outputs), folded
  into the constant the last downstream step adds anyway, which saves a pass over the outputs;
  for a receiver of the last hidden layer the outputs move by the rank-one dh * w, so KL's
  <p_full, u> is a scalar update per example and two more passes go. exp runs as exp2 (faster in
  torch on a CPU) and a term's overflow is detected with one reduction: on a dense net the last
  hidden layer's rows are only as wide as the outputs, so these passes, not matmuls, are its cost.
  Only the outputs a receiver can move (live paths) are evaluated; the others add a per-example
  constant to the terms (`Metric.rest_t`): an output receiver's rows are one output wide.
- A candidate whose delta is exactly zero on an example leaves that example's term as it was,
  so only the other (candidate, example) pairs are pushed downstream (`chain_terms`), when few
  enough move to pay for the gathers a pair costs (`PAIRS_MAX_FRACTION`; on digits, where a
  clean/corrupted pair shares blank pixels, most of a first hidden layer's pairs move: too many).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from circuitry.workers.acdc.guesses import ExactOutput
from circuitry.workers.graph import LOG2_E, Problem

# Largest speculation window (candidates evaluated in one round), in float64 elements of the widest
# downstream activation; the work itself runs in cache-sized tiles, so this bounds only the
# [window, N] rows of receiver states (and how much a wrong guess can waste).
BATCH_ELEMENTS = 1 << 26
# Tile of candidate rows evaluated at once, in elements of the widest downstream activation: on a
# CPU small enough (2^18 float64 = 2 MiB) that a tile's intermediates stay in cache and can be
# overwritten in place; on a GPU large, so that each kernel launch carries enough work. 2^18, not
# 2^19: two processes scoring side by side (chunks of `exact` on 2 workers) share the L3 cache.
TILE_ELEMENTS = {"cpu": 1 << 18}
TILE_ELEMENTS_OTHER = 1 << 25
# A tile also holds a few [rows, examples] tensors of its own (the candidates' values, dh, <p, u>,
# the terms), counted as this many neurons: on a net whose outputs are 2 wide they are most of the
# tile, and leaving them uncounted makes its tiles spill out of cache.
TILE_ROW_TENSORS = 4
# `chain_terms` evaluates only the (candidate, example) pairs that move when at most this fraction
# does (about the break-even on a dense digits net: benchmarks/acdc.py)
PAIRS_MAX_FRACTION = 0.4


def full_state(problem: Problem) -> tuple[list, list]:
    """The full model's pre-activations z (None for the inputs) and activations h per layer, as new
    tensors, neuron-major ([n_l, N]): a receiver's plan and commit read and write the positions
    it reaches, rows here (a row gather is a copy; a column gather of an example-major state is
    slow)."""
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


def current_terms(metric, y_t: torch.Tensor) -> torch.Tensor:
    """The per-example terms of the circuit whose outputs are y_t [n_out, N], by the same
    formula as a candidate row's (so that increases compare like with like)."""
    return _terms(metric, y_t if metric.shift_t is None else y_t - metric.shift_t)


@dataclass
class Plan:
    """What `Downstream` needs to evaluate receiver j's candidates (see `Downstream.plan`)."""
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


class Downstream:
    """The current circuit's state at layers >= m (receivers of layer m under test) and a batched
    evaluator of the metric for new values of one receiver's pre-activation. The state, z and h,
    is neuron-major ([n_l, N] a layer: `full_state`) and changed in place by `commit`.

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

    def plan(self, j: int) -> Plan:
        """Per downstream layer: the reached positions (a slice when all are reached, which
        avoids gathers), the live weights between them and the constant part of the next
        pre-activation (the last one minus the metric's shift), neuron-major."""
        g, L = self.p.graph, self.L
        u_now_t = self.h[L] - self.shift_t
        if self.m == L:
            return self._finish(Plan([], u_now_t), torch.tensor([j], device=self.device))

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
        return self._finish(Plan(steps, u_now_t, pu, h_j=self.h[self.m][j]), r)

    def derivatives(self, j: int, zj: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """First and second derivatives (divided by N) of each example's metric term in receiver
        j's pre-activation, at zj [N], in closed form (only where `closed_form`: the receiver feeds
        the outputs itself, m >= L-1, and the metric has a shifted form): what `metric_model`
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

    def exact_output(self, j: int, plan: Plan):
        """For an output receiver under KL (with its shifted form): a maker of exact predictions,
        (state [N], deltas [B, N]) -> `ExactOutput`; else None."""
        if self.m != self.L or not plan.log2:
            return None
        shift = self.shift(j).view(-1)
        log_rest = plan.rest[0][0].log()
        p = self.metric.p_full_t[j]
        return lambda state, deltas: ExactOutput(state - shift, log_rest, p, deltas)

    def _finish(self, plan: Plan, r) -> Plan:
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

    def _outputs(self, j: int, zc: torch.Tensor, plan: Plan, examples=None):
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

    def evaluate(self, j: int, zc: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _tile_terms(self, j: int, zc: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Per-example terms [T, N] for one tile of candidate pre-activations zc [T, N]."""
        y, pu = self._outputs(j, zc, plan)
        return self.terms(y, scratch=self._buffer("scratch", y.shape), pu=pu, p_t=plan.p_t, rest=plan.rest,
                          log2=plan.log2)

    def evaluate_pairs(self, j: int, values: torch.Tensor, examples: torch.Tensor, plan: Plan) -> torch.Tensor:
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
                    plan: Plan, pairs: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """`evaluate` for a chain of candidate states: row k is the state before candidate k (the
        earlier rows with `removed` set applied) plus its delta d[k]. Where d[k, n] == 0 exactly,
        row k holds on example n the same value as the state before it, so its term is that
        state's (`terms` for the chain's start, else the row of the last removal that moved example
        n; equal up to the rounding of the chain's running sum, a level at which no decision is
        defined anyway: module doc); only the other (row, example) pairs are pushed downstream.
        Also returns the number of (row, example) pairs evaluated. On digits many of a first hidden
        layer's pairs are such zeros (equal pixels in a clean/corrupted pair)."""
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

    def commit(self, j: int, zj: torch.Tensor, plan: Plan) -> None:
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
