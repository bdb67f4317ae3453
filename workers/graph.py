"""The dense neuron graph of a `circuitry.mlp/1` checkpoint, its ablations and its circuit metric.

Everything here is float64 and in *position* order (docs/design.md): `weights[l][j, i]` is the edge
from position i of layer l to position j of layer l+1. Layer 0 is the input layer (features after
`in_perm`, or the concatenated embeddings), layer L = len(weights) holds the output logits/values.

Canonical edge order (the row order of circuit.parquet and of `exact_scores` slices): weight
matrix l ascending, then receiver (dst) position ascending, then sender (src) position ascending,
i.e. the row-major flattening of `weights[0]`, `weights[1]`, ... concatenated. This is also the
order ACDC would visit senders within one receiver.

A circuit is a list of bool masks, one per weight matrix (True = edge kept). A removed edge feeds
its receiver the sender's *ablated* value instead of the sender's value in the circuit's own
forward pass, so a circuit's pre-activation is
    z_{l+1} = h_l @ (M_l * W_l).T + h_abl_l @ (~M_l * W_l).T + b_l.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from circuitry.workers.names import ABLATIONS

LOG2_E = 1.0 / math.log(2.0)
LN_2 = math.log(2.0)

METRICS = ("mse", "kl", "logit_diff")  # logit_diff: classifiers only (Metric)


@dataclass(frozen=True)
class Graph:
    shape: tuple[int, ...]
    weights: tuple[torch.Tensor, ...]  # float64, [n_{l+1}, n_l], position order
    biases: tuple[torch.Tensor, ...]
    in_perm: torch.Tensor
    out_perm: torch.Tensor
    embedding: torch.Tensor | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "Graph":
        emb = ckpt.get("embedding")
        return cls(
            shape=tuple(int(n) for n in ckpt["shape"]),
            weights=tuple(w.detach().to(torch.float64).clone() for w in ckpt["weights"]),
            biases=tuple(b.detach().to(torch.float64).clone() for b in ckpt["biases"]),
            in_perm=ckpt["in_perm"].long().clone(),
            out_perm=ckpt["out_perm"].long().clone(),
            embedding=None if emb is None else emb.detach().to(torch.float64).clone(),
        )

    @property
    def n_layers(self) -> int:
        """Number of weight matrices (the output layer's index)."""
        return len(self.weights)

    @property
    def n_edges(self) -> int:
        return sum(w.numel() for w in self.weights)

    def edge_offsets(self) -> list[int]:
        """Canonical index of the first edge of each weight matrix, plus the total at the end."""
        out = [0]
        for w in self.weights:
            out.append(out[-1] + w.numel())
        return out

    def full_masks(self, value: bool = True) -> list[torch.Tensor]:
        return [torch.full(w.shape, value, dtype=torch.bool, device=w.device) for w in self.weights]

    def to(self, device) -> "Graph":
        """This graph with every tensor on `device` (itself when already there)."""
        device = torch.device(device)
        if self.weights[0].device == device:
            return self
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Graph(self.shape, tuple(map(move, self.weights)), tuple(map(move, self.biases)),
                     move(self.in_perm), move(self.out_perm), move(self.embedding))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs -> layer-0 activations in position order (float64)."""
        if self.embedding is not None:
            h = self.embedding[x.long()].flatten(1)
        else:
            h = x.to(torch.float64)
        return h[:, self.in_perm]

    def output_position(self, output: int | None) -> int | None:
        """Position of output id `output` in the last layer (out_perm[p] == output)."""
        if output is None:
            return None
        if not 0 <= output < self.shape[-1]:
            raise ValueError(f"output {output} out of range: the model has {self.shape[-1]} outputs (0..{self.shape[-1] - 1})")
        return int(torch.nonzero(self.out_perm == output)[0, 0])

    def forward(self, h0: torch.Tensor, masks=None, ablated=None) -> list[torch.Tensor]:
        """All layers' activations (post-SiLU; the last is the raw output) of the circuit `masks`
        whose removed edges read `ablated[l]` ([N, n_l]); masks=None is the full model."""
        acts = [h0]
        h = h0
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            if masks is None:
                z = h @ w.T + b
            else:
                # kept edges read the circuit's own value, removed ones the ablated value; written
                # as two disjoint masked matmuls so a removed edge's term never depends on h
                z = h @ (w * masks[l]).T + ablated[l] @ (w * ~masks[l]).T + b
            h = z if l == self.n_layers - 1 else F.silu(z)
            acts.append(h)
        return acts


def ablation_values(graph: Graph, clean_h0: torch.Tensor, corrupt_h0: torch.Tensor, ablation: str) -> list[torch.Tensor]:
    """What a removed edge's sender feeds its receiver, per layer, [N, n_l] (layers 0..L-1):
    resample = the full model's activation on the paired corrupted input; zero = 0; mean = the
    sender's mean activation over the clean examples."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
    n = clean_h0.shape[0]
    if ablation == "resample":
        return graph.forward(corrupt_h0)[:-1]
    clean = graph.forward(clean_h0)[:-1]
    if ablation == "zero":
        return [torch.zeros_like(a) for a in clean]
    return [a.mean(0, keepdim=True).expand(n, -1).clone() for a in clean]


class Metric:
    """The circuit metric against the full model's clean output `y_full` ([N, n_out], position
    order): MSE for regression, KL(full || circuit) averaged over examples for classification, or
    (`logit_diff`, classifiers, opt-in) the drop of the logit difference, normalised: each example's
    term is (d_full - d_circuit) / mean_x |d_full|, where d(y) = y[c] - mean_{k != c} y[k] and c is
    the class the FULL model predicts on that example (its argmax: the metric asks the circuit to
    keep the model's own decision margin, as KL asks it to keep the model's distribution, and needs
    no labels). d is linear in y, so a term is <w, y> with a per-example weight row w; dividing by
    the full model's mean |d| makes the metric a fraction of the margin (0 at the full model, ~1
    when the margin is gone), so a tau reads as "this much of the margin", not in logit units.

    `out_pos` restricts it to one output position: for MSE the squared error of that column only;
    for KL the Bernoulli KL of the event "class = that output" (p_full(K) vs p_circuit(K)), which
    is still a KL(full || circuit) and zero exactly when the circuit reproduces that probability.
    Evaluates any leading batch dims: y [..., N, n_out] -> [...]."""

    def __init__(self, kind: str, y_full: torch.Tensor, out_pos: int | None = None):
        if kind not in METRICS:
            raise ValueError(f"unknown metric {kind!r}")
        self.kind, self.y_full, self.out_pos = kind, y_full, out_pos
        if kind == "logit_diff":
            if out_pos is not None:
                raise ValueError("the logit_diff metric reads every output: drop the output")
            n_out = y_full.shape[-1]
            if n_out < 2:
                raise ValueError("the logit_diff metric needs a classifier with at least 2 outputs")
            # w = e_c n/(n-1) - 1/(n-1): <w, y> = y[c] - mean of the other logits
            w = torch.full_like(y_full, -1.0 / (n_out - 1))
            w.scatter_(-1, y_full.argmax(-1, keepdim=True), 1.0)
            self.ld_w_t = w.T.contiguous()  # [n_out, N]
            self.ld_full = (w * y_full).sum(-1)
            # a float, not a tensor: on_examples keeps it (the scale is the whole set's)
            self.ld_scale = max(float(self.ld_full.abs().mean()), 1e-300)
        if kind == "kl":
            self.logp_full = F.log_softmax(y_full, -1)
            self.p_full = self.logp_full.exp()
            self.neg_entropy_full = (self.p_full * self.logp_full).sum(-1)
            self.top_full = y_full.amax(-1, keepdim=True)  # the logsumexp shift (see per_example)
            self.p_full_t = self.p_full.T.contiguous()  # [n_out, N], for per_example_t
            if out_pos is not None:
                self.lq1_full, self.lq0_full = self._bernoulli_logs(y_full)
        # the per-example shift of `per_example_shifted_t` (KL: the full model's top logit, the same
        # for every output; MSE: the full model's outputs), output-major; None: no shifted form
        self.shift_t = None  # logit_diff: none (it is linear in y: the plain form is as cheap)
        if out_pos is None and kind != "logit_diff":
            self.shift_t = self.top_full.T.contiguous() if kind == "kl" else y_full.T.contiguous()

    def _bernoulli_logs(self, y):
        lp = F.log_softmax(y, -1)
        others = torch.cat([lp[..., : self.out_pos], lp[..., self.out_pos + 1 :]], -1)
        return lp[..., self.out_pos], torch.logsumexp(others, -1)

    def logit_diff(self, y: torch.Tensor) -> torch.Tensor:
        """Each example's logit difference d(y) [..., N] (logit_diff only; class docstring)."""
        return (y * self.ld_w_t.T).sum(-1)

    def relevant_outputs(self, n_out: int) -> torch.Tensor:
        """Output positions whose value the metric reads (bool [n_out])."""
        keep = torch.zeros(n_out, dtype=torch.bool, device=self.y_full.device)
        if self.kind == "mse" and self.out_pos is not None:
            keep[self.out_pos] = True
        else:
            keep[:] = True
        return keep

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self.per_example(y).mean(-1)

    def per_example(self, y: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Each example's term of the metric: y [..., N, n_out] -> [..., N] (the metric is their
        mean). `scratch` (optional, y's shape) holds the temporaries, so that a hot loop allocates
        nothing (fresh multi-MiB tensors cost page faults)."""
        if self.kind == "logit_diff":
            return self.ld_full.sub(torch.mul(y, self.ld_w_t.T, out=scratch).sum(-1)).div_(self.ld_scale)
        if self.kind == "mse":
            if self.out_pos is None:
                return torch.sub(y, self.y_full, out=scratch).square_().mean(-1)
            return (y[..., self.out_pos] - self.y_full[:, self.out_pos]) ** 2
        if self.out_pos is None:
            # KL = sum_c p log p - sum_c p y + logsumexp(y), as sum_c p = 1; written out because
            # log_softmax over a short last dim is several times slower than these ops. The
            # logsumexp is shifted by the full model's top logit (a constant: no max pass over y);
            # where that shift over- or underflows (a logit moved by ~700) the row's own max is used
            lse = torch.sub(y, self.top_full, out=scratch).exp_().sum(-1).log_().add_(self.top_full[..., 0])
            bad = ~torch.isfinite(lse)
            if bad.any():
                yb = y[bad]
                top = yb.amax(-1, keepdim=True)
                lse[bad] = (yb - top).exp().sum(-1).log() + top[..., 0]
            return (self.neg_entropy_full - torch.mul(y, self.p_full, out=scratch).sum(-1)).add_(lse)
        l1, l0 = self._bernoulli_logs(y)
        q1 = self.lq1_full.exp()
        return q1 * (self.lq1_full - l1) + (1 - q1) * (self.lq0_full - l0)

    def on_examples(self, idx: torch.Tensor) -> "Metric":
        """The same metric against the full model's outputs for the examples `idx` only (per-example
        terms of a list of (example, value) pairs: example idx[k] in column k)."""
        return _MetricOnExamples(self, idx)

    def rest_t(self, u_t: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What the outputs outside positions `keep` add to each example's term, for
        `per_example_shifted_t`'s `rest`, from shifted output-major outputs u_t [n_out, N]: their
        per-example sums ([2, N]: KL's sum exp(u) and <p, u>; [1, N]: MSE's sum u^2) and their values
        (for the overflow fallback). None when `keep` is every output. A caller whose candidates
        move only some outputs (ACDC's: an output receiver moves one, a hidden receiver with a
        few live paths a few) evaluates those alone."""
        rest = torch.ones(u_t.shape[0], dtype=torch.bool, device=u_t.device)
        rest[keep] = False
        if not bool(rest.any()):
            return None
        u = u_t[rest]
        if self.kind == "mse":
            return (u * u).sum(0)[None], u
        return torch.stack([u.exp().sum(0), (self.p_full_t[rest] * u).sum(0)]), u

    def per_example_shifted_t(self, ut: torch.Tensor, scratch: torch.Tensor | None = None,
                              pu: torch.Tensor | None = None, p_t: torch.Tensor | None = None,
                              rest: tuple[torch.Tensor, torch.Tensor] | None = None, log2: bool = False) -> torch.Tensor:
        """`per_example_t` of outputs given already shifted, ut = yt - shift_t (output-major
        [n_out, ..., N]; only where shift_t is not None). A caller that can fold the shift into a
        constant it adds anyway (ACDC's downstream tiles) saves a pass over the outputs, and a
        caller that knows <p_full, u> per example (`pu`, [..., N], over every output; for a
        rank-one change of the outputs it is a scalar update) saves two more. With `rest`
        (`rest_t`), ut holds only some outputs (`p_t`: their rows of p_full_t) and the others'
        constant contribution is added. With `log2` (KL only), ut holds u log2(e), which the
        caller can fold into the weights and constants it computes u from: exp(u) is then exp2(ut)
        without a pass to scale it. KL = sum p log p - <p, u> + logsumexp(u), as sum_c p = 1 and
        u = y - top; MSE = mean_c u^2. `ut` is left as it was."""
        if self.kind == "mse":
            sq = torch.square(ut, out=scratch).sum(0)
            return (sq if rest is None else sq.add_(rest[0][0])).div_(self.y_full.shape[-1])
        if pu is None:
            p_t = self.p_full_t if p_t is None else p_t
            pu = torch.mul(ut, p_t.view(ut.shape[:1] + (1,) * (ut.dim() - 2) + ut.shape[-1:]), out=scratch).sum(0)
            if log2:
                pu.mul_(LN_2)
            if rest is not None:
                pu.add_(rest[0][1])
        # exp(u) as exp2(u log2 e): torch's float64 exp2 is about twice as fast as its exp on a
        # CPU, for an argument rounding of ~|u| 1e-16 relative (u <= 0 near the terms that matter)
        s = torch.exp2(ut if log2 else torch.mul(ut, LOG2_E, out=scratch), out=scratch).sum(0)
        lse = (s if rest is None else s.add_(rest[0][0])).log_()
        if not math.isfinite(float(lse.sum())):  # one reduction: isfinite on every term is slow
            # the full model's top logit is no safe shift there (a logit moved by ~700)
            bad = ~torch.isfinite(lse)
            ut = ut * LN_2 if log2 else ut
            full = ut if rest is None else torch.cat([ut, rest[1].view(rest[1].shape[:1] + (1,) * (ut.dim() - 2)
                                                                        + rest[1].shape[-1:]).expand(-1, *ut.shape[1:])])
            lse[bad] = torch.logsumexp(full.movedim(0, -1)[bad], -1)
        return (self.neg_entropy_full - pu).add_(lse)

    def per_example_t(self, yt: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """`per_example` for outputs stored output-major, yt [n_out, ..., N] -> [..., N] (the layout of
        ACDC's downstream tiles: a reduction over the leading dimension adds whole contiguous rows,
        several times faster than one over a short, strided last dimension). The same formulas."""
        if self.out_pos is not None:
            return self.per_example(yt.movedim(0, -1), scratch=None if scratch is None else scratch.movedim(0, -1))
        if self.kind == "logit_diff":
            w_t = self.ld_w_t.view(yt.shape[:1] + (1,) * (yt.dim() - 2) + yt.shape[-1:])
            return self.ld_full.sub(torch.mul(yt, w_t, out=scratch).sum(0)).div_(self.ld_scale)
        if self.kind == "mse":
            return torch.sub(yt, self.y_full.T.reshape(yt.shape[:1] + (1,) * (yt.dim() - 2) + yt.shape[-1:]),
                             out=scratch).square_().mean(0)
        top = self.top_full[:, 0]
        lse = torch.sub(yt, top, out=scratch).exp_().sum(0).log_().add_(top)
        bad = ~torch.isfinite(lse)
        if bad.any():  # as in per_example: the row's own max where the shift over- or underflows
            lse[bad] = torch.logsumexp(yt.movedim(0, -1)[bad], -1)
        p_t = self.p_full_t.view(yt.shape[:1] + (1,) * (yt.dim() - 2) + yt.shape[-1:])
        return (self.neg_entropy_full - torch.mul(yt, p_t, out=scratch).sum(0)).add_(lse)


class _MetricOnExamples(Metric):
    """`Metric.on_examples`: the parent's per-example constants gathered at `idx` (not recomputed:
    that costs more), each when first read. A formula reads two or three of the constants, and
    ACDC calls this for every tile of (example, value) pairs, so gathering all of them would
    cost several times what the formula needs."""

    def __init__(self, parent: Metric, idx: torch.Tensor):
        self._parent, self._idx = parent, idx

    def __getattr__(self, name: str):  # only called for attributes not set yet
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._parent, name)
        if isinstance(value, torch.Tensor):
            value = value.index_select(1 if name.endswith("_t") else 0, self._idx)
        setattr(self, name, value)
        return value


@dataclass
class Problem:
    """One discovery's fixed inputs: the graph, the clean activations of the full model, the
    ablated sender values and the metric."""

    graph: Graph
    clean: list[torch.Tensor]  # full model's activations on the clean inputs, layers 0..L
    ablated: list[torch.Tensor]  # layers 0..L-1
    metric: Metric
    kind: str
    ablation: str
    out_pos: int | None

    @classmethod
    def build(cls, graph: Graph, clean_x, corrupt_x, kind: str, ablation: str = "resample", output: int | None = None) -> "Problem":
        if kind not in METRICS:
            raise ValueError(f"unknown metric {kind!r}")
        h0 = graph.features(clean_x)
        clean = graph.forward(h0)
        ablated = ablation_values(graph, h0, graph.features(corrupt_x), ablation)
        out_pos = graph.output_position(output)
        return cls(graph, clean, ablated, Metric(kind, clean[-1], out_pos), kind, ablation, out_pos)

    @property
    def n_examples(self) -> int:
        return self.clean[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.clean[0].device

    def to(self, device) -> "Problem":
        """This problem with the graph, activations and metric on `device` (the same values:
        moving float64 tensors is exact)."""
        device = torch.device(device)
        if self.device == device:
            return self
        clean = [t.to(device) for t in self.clean]
        return Problem(self.graph.to(device), clean, [t.to(device) for t in self.ablated],
                       Metric(self.kind, clean[-1], self.out_pos), self.kind, self.ablation, self.out_pos)

    def circuit_output(self, masks) -> torch.Tensor:
        return self.graph.forward(self.clean[0], masks, self.ablated)[-1]

    def circuit_metric(self, masks) -> float:
        return float(self.metric(self.circuit_output(masks)))

    @cached_property
    def empty_output(self) -> torch.Tensor:
        """The empty circuit's output (every edge ablated), computed once per problem: the
        faithfulness figures, the faithfulness curve, the logit gaps and EAP's r all read it."""
        return self.circuit_output(self.graph.full_masks(False))

    @property
    def empty_metric(self) -> float:
        """circuit_metric of the empty circuit."""
        return float(self.metric(self.empty_output))
