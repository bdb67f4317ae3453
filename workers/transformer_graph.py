"""The head-level graph of a transformer (EAP-IG's and ACDC's), its patched forward and its metrics.

Nodes and names (hannamw/EAP-IG `src/eap/graph.py`): senders `input` (the embeddings: token or
linear input map, plus positions), every head `a{L}.h{H}` (its output z @ W_O written to the
residual stream, without b_O) and every MLP `m{L}`; receivers every head's query, key and value
inputs `a{L}.h{H}<q>`, `<k>`, `<v>`, every MLP's input `m{L}` and `logits`. An edge joins a sender
to a receiver later in the residual stream; an MLP reads the heads of its own layer. Edge names
are `sender->receiver` (`a0.h1->a1.h2<k>`); an attention-only model has no MLP nodes.

Indices: senders in forward order (input, a0.h0..a0.h{H-1}, m0, a1.h0, ...); receivers in
EAP-IG's backward order (per layer a{L}.h0<q>..h{H-1}<q>, the <k>s, the <v>s, m{L}; logits last).
Receiver r reads the senders [0, n_senders[r]) (a prefix). A circuit is a bool mask [R, S]
(receiver-major; `real` marks the edges that exist). The canonical edge order (circuit.parquet's
rows, flat score vectors) is EAP-IG's `Graph.edges` insertion order: per layer, each sender then
each head then q, k, v; then each sender into the MLP; finally each sender into the logits.

Patching (design.md, "Patching an edge"): receiver r's input is
    x_r = sum_s M[r, s] out[s] + sum_s (1 - M[r, s]) abl[s] + c_r,
with out[s] the sender's output in the circuit's own forward pass, abl[s] its ablated value (the
full model's output on the corrupted input, zero, or the mean over the discovery examples) and
c_r the attention output biases b_O of the layers before r (constants, never ablated: EAP-IG's
`hook_result` excludes them too). With LayerNorm, each receiver normalises its own input (q, k and
v separately, as TransformerLens with split qkv inputs). Everything is float64.

Metrics (per example, averaged over examples; 0 at the full model):
- `kl`: KL(full || circuit) of the output distribution, averaged over the scored positions;
- `logit_diff`: full model's (logit[correct] - logit[incorrect]) minus the circuit's, averaged
  over the scored positions (ACDC's negated logit difference, shifted so that the full model is 0);
- `mse`: squared error to the full model's outputs, averaged over scored positions and outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cached_property

import torch
import torch.nn.functional as F

from circuitry.workers.names import ABLATIONS

TRANSFORMER_METRICS = ("kl", "logit_diff", "mse")
LN_EPS = 1e-5


@dataclass(frozen=True)
class Weights:
    """A transformer's parameters in float64, TransformerLens layout. Absent parts are None."""
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    activation: str
    W_Q: torch.Tensor  # [L, H, D, dh]
    b_Q: torch.Tensor  # [L, H, dh]
    W_K: torch.Tensor
    b_K: torch.Tensor
    W_V: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor  # [L, H, dh, D]
    b_O: torch.Tensor  # [L, D]
    W_U: torch.Tensor  # [D, O]
    b_U: torch.Tensor  # [O]
    W_E: torch.Tensor | None = None  # [vocab, D] (token inputs)
    W_in: torch.Tensor | None = None  # [d_input, D] (real-valued inputs)
    b_in: torch.Tensor | None = None
    W_pos: torch.Tensor | None = None  # [n_ctx, D]
    mlp_W_in: torch.Tensor | None = None  # [L, D, M]
    mlp_b_in: torch.Tensor | None = None  # [L, M]
    mlp_W_out: torch.Tensor | None = None  # [L, M, D]
    mlp_b_out: torch.Tensor | None = None  # [L, D]
    ln1_w: torch.Tensor | None = None  # [L, D] each (LayerNorm models only)
    ln1_b: torch.Tensor | None = None
    ln2_w: torch.Tensor | None = None
    ln2_b: torch.Tensor | None = None
    lnf_w: torch.Tensor | None = None  # [D]
    lnf_b: torch.Tensor | None = None

    @property
    def has_mlp(self) -> bool:
        return self.d_mlp > 0

    @property
    def layer_norm(self) -> bool:
        return self.ln1_w is not None

    @classmethod
    def from_model(cls, model) -> "Weights":
        """From a `workers.transformer.Transformer` (TransformerLens attribute names)."""
        cfg = model.cfg
        d = lambda t: None if t is None else t.detach().to(torch.float64).clone()  # noqa: E731
        blocks = list(model.blocks)
        stack = lambda get: torch.stack([d(get(b)) for b in blocks])  # noqa: E731
        has_mlp = cfg.d_mlp > 0
        ln = bool(getattr(cfg, "layer_norm", False))
        embed = model.embed
        kw = dict(
            n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model, d_head=cfg.d_head,
            d_mlp=cfg.d_mlp, activation=cfg.activation,
            **{n: stack(lambda b, n=n: getattr(b.attn, n)) for n in
               ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")},
            W_U=d(model.unembed.W_U), b_U=d(model.unembed.b_U),
            W_E=d(getattr(embed, "W_E", None)), W_in=d(getattr(embed, "W_in", None)),
            b_in=d(getattr(embed, "b_in", None)),
            W_pos=None if getattr(model, "pos_embed", None) is None else d(model.pos_embed.W_pos),
        )
        if has_mlp:
            kw.update(mlp_W_in=stack(lambda b: b.mlp.W_in), mlp_b_in=stack(lambda b: b.mlp.b_in),
                      mlp_W_out=stack(lambda b: b.mlp.W_out), mlp_b_out=stack(lambda b: b.mlp.b_out))
        if ln:
            kw.update(ln1_w=stack(lambda b: b.ln1.w), ln1_b=stack(lambda b: b.ln1.b),
                      lnf_w=d(model.ln_final.w), lnf_b=d(model.ln_final.b))
            if has_mlp:
                kw.update(ln2_w=stack(lambda b: b.ln2.w), ln2_b=stack(lambda b: b.ln2.b))
        return cls(**kw)

    @classmethod
    def random(cls, n_layers=2, n_heads=4, d_model=16, d_head=4, d_mlp=32, d_vocab=10, d_output=None,
               n_ctx=8, d_input=0, layer_norm=False, activation="gelu", seed=0, scale=1.0) -> "Weights":
        """Random weights (tests, benchmarks): N(0, scale / sqrt(fan_in)) matrices, small biases."""
        g = torch.Generator().manual_seed(seed)
        r = lambda *s, fan: torch.randn(*s, generator=g, dtype=torch.float64) * (scale / math.sqrt(fan))  # noqa: E731
        b = lambda *s: 0.1 * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        L, H, D, dh, M = n_layers, n_heads, d_model, d_head, d_mlp
        kw = dict(n_layers=L, n_heads=H, d_model=D, d_head=dh, d_mlp=M, activation=activation,
                  W_Q=r(L, H, D, dh, fan=D), b_Q=b(L, H, dh), W_K=r(L, H, D, dh, fan=D), b_K=b(L, H, dh),
                  W_V=r(L, H, D, dh, fan=D), b_V=b(L, H, dh), W_O=r(L, H, dh, D, fan=H * dh), b_O=b(L, D),
                  W_U=r(D, d_output or d_vocab, fan=D), b_U=b(d_output or d_vocab), W_pos=r(n_ctx, D, fan=1))
        if d_input:
            kw.update(W_in=r(d_input, D, fan=d_input), b_in=b(D))
        else:
            kw.update(W_E=r(d_vocab, D, fan=1))
        if M:
            kw.update(mlp_W_in=r(L, D, M, fan=D), mlp_b_in=b(L, M), mlp_W_out=r(L, M, D, fan=M), mlp_b_out=b(L, D))
        if layer_norm:
            one = lambda *s: 1 + b(*s)  # noqa: E731
            kw.update(ln1_w=one(L, D), ln1_b=b(L, D), lnf_w=one(D), lnf_b=b(D))
            if M:
                kw.update(ln2_w=one(L, D), ln2_b=b(L, D))
        return cls(**kw)

    def to(self, device) -> "Weights":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return Weights(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})


def _ln(x, w, b):
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + LN_EPS).sqrt() * w + b


def _act(name: str, x):
    if name == "gelu_new":
        return F.gelu(x, approximate="tanh")
    return F.gelu(x) if name == "gelu" else F.relu(x)


class TransformerGraph:
    """Node and edge structure of a `Weights` (module doc) plus the node computations."""

    def __init__(self, w: Weights):
        self.w = w
        L, H = w.n_layers, w.n_heads
        self.per_layer = H + (1 if w.has_mlp else 0)  # senders per layer
        self.senders = ["input"]
        self.receivers = []
        self.n_senders = []  # per receiver: it reads senders [0, n)
        self.recv_layer = []
        self.head_recv = torch.zeros(L, 3, H, dtype=torch.long)  # receiver index of (layer, q/k/v, head)
        for l in range(L):
            before = len(self.senders)
            for i, letter in enumerate("qkv"):
                for h in range(H):
                    self.head_recv[l, i, h] = len(self.receivers)
                    self.receivers.append(f"a{l}.h{h}<{letter}>")
                    self.n_senders.append(before)
                    self.recv_layer.append(l)
            self.senders += [f"a{l}.h{h}" for h in range(H)]
            if w.has_mlp:
                self.receivers.append(f"m{l}")
                self.n_senders.append(len(self.senders))
                self.recv_layer.append(l)
                self.senders.append(f"m{l}")
        self.receivers.append("logits")
        self.n_senders.append(len(self.senders))
        self.recv_layer.append(L)
        S, R = len(self.senders), len(self.receivers)
        self.real = torch.zeros(R, S, dtype=torch.bool)
        for r, n in enumerate(self.n_senders):
            self.real[r, :n] = True
        self.edge_pairs = self._canonical_edges()  # [E, 2] (receiver, sender), canonical order
        # per receiver, the attention-output biases b_O of the layers it reads (c_r): a head of
        # layer l reads layers < l, an MLP of layer l and the logits read layers <= l
        cum = torch.cat([torch.zeros_like(w.b_O[:1]), torch.cumsum(w.b_O, 0)])  # cum[l] = sum_{l' < l}
        self.const = torch.stack([cum[self.recv_layer[r] + (0 if self.receivers[r][0] == "a" else 1)]
                                  if r < R - 1 else cum[L] for r in range(R)])

    # ---------------------------------------------------------------- structure
    def _is_mlp(self, r: int) -> bool:
        return self.receivers[r].startswith("m")

    def sender_index(self, name: str) -> int:
        return self.senders.index(name)

    def receiver_index(self, name: str) -> int:
        return self.receivers.index(name)

    @property
    def n_edges(self) -> int:
        return int(self.real.sum())

    def _canonical_edges(self) -> torch.Tensor:
        pairs, L, H = [], self.w.n_layers, self.w.n_heads
        for l in range(L):
            first = 1 + l * self.per_layer
            for s in range(first):
                for h in range(H):
                    for i in range(3):
                        pairs.append((int(self.head_recv[l, i, h]), s))
            if self.w.has_mlp:
                m = int(self.head_recv[l, 2, H - 1]) + 1
                pairs += [(m, s) for s in range(self.n_senders[m])]
        R = len(self.receivers) - 1
        pairs += [(R, s) for s in range(self.n_senders[R])]
        return torch.tensor(pairs, dtype=torch.long)

    def edge_names(self) -> tuple[list[str], list[str]]:
        """(sender, receiver) names of the canonical edges."""
        return ([self.senders[s] for s in self.edge_pairs[:, 1].tolist()],
                [self.receivers[r] for r in self.edge_pairs[:, 0].tolist()])

    def flat(self, matrix: torch.Tensor) -> torch.Tensor:
        """[R, S] -> [E] in canonical order."""
        return matrix[self.edge_pairs[:, 0], self.edge_pairs[:, 1]]

    def unflat(self, flat: torch.Tensor, fill=False) -> torch.Tensor:
        out = torch.full(self.real.shape, fill, dtype=flat.dtype)
        out[self.edge_pairs[:, 0], self.edge_pairs[:, 1]] = flat
        return out

    def full_mask(self, value: bool = True) -> torch.Tensor:
        return self.real.clone() if value else torch.zeros_like(self.real)

    # ---------------------------------------------------------------- node computations
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The `input` sender's output [N, P, D]."""
        w = self.w
        h = w.W_E[x.long()] if w.W_E is not None else x.to(torch.float64) @ w.W_in + w.b_in
        return h if w.W_pos is None else h + w.W_pos[: h.shape[-2]]

    def heads(self, l: int, q_in, k_in, v_in, hs=None) -> torch.Tensor:
        """Head outputs of layer l from their own q/k/v inputs [h, ..., N, P, D] (heads `hs`, default
        all) -> [h, ..., N, P, D]."""
        w = self.w
        hs = slice(None) if hs is None else hs
        if w.layer_norm:
            q_in, k_in, v_in = (_ln(t, w.ln1_w[l], w.ln1_b[l]) for t in (q_in, k_in, v_in))
        return self.heads_from_qkv(l, self.project(l, 0, q_in, hs), self.project(l, 1, k_in, hs),
                                   self.project(l, 2, v_in, hs), hs)

    def project(self, l, which, x, hs=slice(None)):
        """q, k or v (which = 0, 1, 2) of heads hs from normalised inputs x [h, ..., N, P, D]."""
        W = (self.w.W_Q, self.w.W_K, self.w.W_V)[which][l][hs]
        b = (self.w.b_Q, self.w.b_K, self.w.b_V)[which][l][hs]
        shape = x.shape
        y = torch.bmm(x.reshape(shape[0], -1, shape[-1]), W) + b[:, None, :]
        return y.reshape(*shape[:-1], W.shape[-1])

    def pattern(self, q, k):
        P = q.shape[-2]
        att = q @ k.transpose(-1, -2) / math.sqrt(self.w.d_head)
        causal = torch.ones(P, P, dtype=torch.bool, device=q.device).tril()
        return att.masked_fill(~causal, float("-inf")).softmax(-1)

    def patterns(self, clean_out: torch.Tensor) -> list[torch.Tensor]:
        """The full model's attention patterns per layer, [N, H, query, key], from its sender
        outputs (`forward(...)[0]`)."""
        out = []
        for l in range(self.w.n_layers):
            x = clean_out[:1 + l * self.per_layer].sum(0) + self.const[int(self.head_recv[l, 0, 0])]
            if self.w.layer_norm:
                x = _ln(x, self.w.ln1_w[l], self.w.ln1_b[l])
            x = x.expand(self.w.n_heads, *x.shape)
            out.append(self.pattern(self.project(l, 0, x), self.project(l, 1, x)).transpose(0, 1))
        return out

    def heads_from_qkv(self, l, q, k, v, hs=slice(None)):
        z = self.pattern(q, k) @ v
        W_O = self.w.W_O[l][hs]
        shape = z.shape
        return torch.bmm(z.reshape(shape[0], -1, shape[-1]), W_O).reshape(*shape[:-1], W_O.shape[-1])

    def mlp(self, l: int, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        if w.layer_norm:
            x = _ln(x, w.ln2_w[l], w.ln2_b[l])
        return _act(w.activation, x @ w.mlp_W_in[l] + w.mlp_b_in[l]) @ w.mlp_W_out[l] + w.mlp_b_out[l]

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        if w.layer_norm:
            x = _ln(x, w.lnf_w, w.lnf_b)
        return x @ w.W_U + w.b_U

    def forward(self, x0: torch.Tensor, mask: torch.Tensor | None = None, abl: torch.Tensor | None = None):
        """The circuit `mask` ([R, S] bool; None = the full model) on input contribution x0
        [N, P, D], removed edges reading `abl` [S, N, P, D]. Returns (every sender's output
        [S, N, P, D], logits [N, P, O]). One masked sum per receiver group: this is the plain
        forward the reference loop runs once per candidate."""
        L, H = self.w.n_layers, self.w.n_heads
        outs = [x0]
        flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731

        def inputs(rs):
            n = self.n_senders[rs[0]]
            out = torch.stack(outs[:n])
            if mask is None:
                x = out.sum(0).expand(len(rs), *out.shape[1:])
            else:
                m = mask[rs, :n].to(out.dtype)
                x = (m @ flat(out) + (1 - m) @ flat(abl[:n])).reshape(len(rs), *out.shape[1:])
            return x + self.const[rs].view(len(rs), 1, 1, -1)

        for l in range(L):
            x = inputs(self.head_recv[l].reshape(-1).tolist()).reshape(3, H, *x0.shape)
            outs += list(self.heads(l, x[0], x[1], x[2]))
            if self.w.has_mlp:
                m = int(self.head_recv[l, 2, H - 1]) + 1
                outs.append(self.mlp(l, inputs([m])[0]))
        y = self.unembed(inputs([len(self.receivers) - 1])[0])
        return torch.stack(outs), y


def ablation_values(graph: TransformerGraph, clean_out: torch.Tensor, corrupt_x0: torch.Tensor | None,
                    ablation: str) -> torch.Tensor:
    """Each sender's ablated output [S, N, P, D] (module doc)."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
    if ablation == "resample":
        return graph.forward(corrupt_x0)[0]
    if ablation == "zero":
        return torch.zeros_like(clean_out)
    return clean_out.mean(1, keepdim=True).expand_as(clean_out).clone()


class TransformerMetric:
    """Per-example circuit metric against the full model's logits `y_full` [N, P, O] (module doc).
    `positions`: the scored positions (long [k]); `correct`/`incorrect`: token ids [N, k]
    (logit_diff only). `per_example(y [..., N, P, O]) -> [..., N]`."""

    def __init__(self, kind: str, y_full: torch.Tensor, positions: torch.Tensor,
                 correct: torch.Tensor | None = None, incorrect: torch.Tensor | None = None):
        if kind not in TRANSFORMER_METRICS:
            raise ValueError(f"unknown metric {kind!r}: choose one of {', '.join(TRANSFORMER_METRICS)}")
        if kind == "logit_diff" and (correct is None or incorrect is None):
            raise ValueError("logit_diff needs the correct and incorrect tokens")
        self.kind, self.positions = kind, positions.long()
        self.correct, self.incorrect = correct, incorrect
        self.y_full = y_full
        yp = y_full[:, self.positions]
        if kind == "kl":
            self.logp_full = F.log_softmax(yp, -1)
            self.p_full = self.logp_full.exp()
            self.neg_entropy = (self.p_full * self.logp_full).sum(-1)  # [N, k]
        elif kind == "logit_diff":
            self.ld_full = self.logit_diff(yp)
        else:
            self.yp_full = yp

    def logit_diff(self, yp: torch.Tensor) -> torch.Tensor:
        """logit[correct] - logit[incorrect] at the scored positions: yp [..., N, k, O] -> [..., N, k]."""
        c = self.correct.expand(*yp.shape[:-1]).unsqueeze(-1)
        i = self.incorrect.expand(*yp.shape[:-1]).unsqueeze(-1)
        return (yp.gather(-1, c) - yp.gather(-1, i))[..., 0]

    def per_example(self, y: torch.Tensor) -> torch.Tensor:
        return self.per_example_scored(y[..., self.positions, :])

    def per_example_scored(self, yp: torch.Tensor) -> torch.Tensor:
        """`per_example` of outputs at the scored positions only, yp [..., N, k, O]."""
        if self.kind == "kl":
            return (self.neg_entropy - (self.p_full * yp).sum(-1) + torch.logsumexp(yp, -1)).mean(-1)
        if self.kind == "logit_diff":
            return (self.ld_full - self.logit_diff(yp)).mean(-1)
        return (yp - self.yp_full).square().mean((-1, -2))

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self.per_example(y).mean(-1)

    def scored(self, y: torch.Tensor) -> torch.Tensor:
        """What the restoration metric r compares (EAP): log-softmax (kl), the logit differences
        (logit_diff) or the raw outputs (mse) at the scored positions, [N, ...]."""
        yp = y[..., self.positions, :]
        if self.kind == "kl":
            return F.log_softmax(yp, -1)
        if self.kind == "logit_diff":
            return self.logit_diff(yp)
        return yp


@dataclass
class TransformerProblem:
    """One discovery's fixed inputs on a transformer: the graph, the full model's clean sender
    outputs, the ablated values and the metric."""
    graph: TransformerGraph
    x0: torch.Tensor  # the clean `input` contribution [N, P, D]
    clean: torch.Tensor  # full model's sender outputs [S, N, P, D]
    ablated: torch.Tensor  # [S, N, P, D]
    y_full: torch.Tensor  # [N, P, O]
    metric: TransformerMetric
    ablation: str
    inputs: torch.Tensor | None = None  # the clean inputs (token ids): ground truth reads them

    @classmethod
    def build(cls, graph: TransformerGraph, clean_x, corrupt_x, kind: str, positions, ablation: str = "resample",
              correct=None, incorrect=None) -> "TransformerProblem":
        x0 = graph.embed(clean_x)
        clean, y = graph.forward(x0)
        abl = ablation_values(graph, clean, graph.embed(corrupt_x) if ablation == "resample" else None, ablation)
        positions = torch.as_tensor(positions, dtype=torch.long)
        return cls(graph, x0, clean, abl, y, TransformerMetric(kind, y, positions, correct, incorrect), ablation,
                   torch.as_tensor(clean_x))

    @property
    def n_examples(self) -> int:
        return self.x0.shape[0]

    def circuit_output(self, mask: torch.Tensor) -> torch.Tensor:
        return self.graph.forward(self.x0, mask, self.ablated)[1]

    def circuit_metric(self, mask: torch.Tensor) -> float:
        return float(self.metric(self.circuit_output(mask)))

    @cached_property
    def empty_output(self) -> torch.Tensor:
        return self.circuit_output(self.graph.full_mask(False))

    @property
    def empty_metric(self) -> float:
        return float(self.metric(self.empty_output))
