"""EAP and EAP-IG scores are the formulas of docs/design.md ("The attribution metric"), checked against an
independent float64 computation: numpy forward and backward passes written out by hand (no torch
autograd), from the checkpoint's tensors, on the discovery half of a --data file."""
import numpy as np
import pytest
import torch

from circuitry import tasks
from circuitry.workers.attribution import restoration_metric
from circuitry.workers.discover import discover, prepare
from circuitry.workers.model import CoordMLP

torch.set_num_threads(1)

N = 24  # examples in the --data file: the first 12 are the discovery examples
STEPS = 5


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _log_softmax(y):
    top = y.max(1, keepdims=True)
    return y - top - np.log(np.exp(y - top).sum(1, keepdims=True))


class HandNet:
    """The checkpoint format's forward (docs/formats.md) in numpy float64, and its backward by hand."""

    def __init__(self, ckpt):
        self.w = [w.double().numpy() for w in ckpt["weights"]]
        self.b = [b.double().numpy() for b in ckpt["biases"]]
        self.in_perm = ckpt["in_perm"].numpy()
        self.out_perm = ckpt["out_perm"].numpy()
        emb = ckpt.get("embedding")
        self.emb = None if emb is None else emb.double().numpy()

    def features(self, x):
        x = x.numpy()
        h = self.emb[x].reshape(len(x), -1) if self.emb is not None else x.astype(np.float64)
        return h[:, self.in_perm]

    def forward(self, h0):
        """Pre-activations zs[l] (layers 1..L, zs[0] unused) and activations hs[l] (0..L)."""
        zs, hs = [None], [h0]
        for l, (w, b) in enumerate(zip(self.w, self.b)):
            z = hs[-1] @ w.T + b
            zs.append(z)
            hs.append(z if l == len(self.w) - 1 else z * _sigmoid(z))
        return zs, hs

    def backward(self, zs, dy):
        """d/dz of every layer given d/dy of the raw outputs (SiLU' = s (1 + z (1 - s)))."""
        deltas = {len(self.w): dy}
        for l in range(len(self.w) - 1, 0, -1):
            s = _sigmoid(zs[l])
            deltas[l] = (deltas[l + 1] @ self.w[l]) * s * (1 + zs[l] * (1 - s))
        return deltas


def hand_scores(ckpt, clean, corrupt, kind, ablation, output, method):
    net = HandNet(ckpt)
    h0, h0c = net.features(clean), net.features(corrupt)
    _, hs = net.forward(h0)
    if ablation == "resample":
        abl = net.forward(h0c)[1]
    elif ablation == "zero":
        abl = [np.zeros_like(h) for h in hs]
    else:
        abl = [np.repeat(h.mean(0, keepdims=True), len(h), 0) for h in hs]
    L = len(net.w)
    y_full = hs[L]
    y_empty = abl[L - 1] @ net.w[L - 1].T + net.b[L - 1]  # every edge ablated: only the last layer matters
    scored = (lambda y: y) if kind == "mse" else _log_softmax
    cols = np.ones(y_full.shape[1], dtype=bool)
    if output is not None:
        cols[:] = False
        cols[int(np.nonzero(net.out_perm == output)[0][0])] = True
    d = (scored(y_full) - scored(y_empty)) * cols  # only output K's column counts
    ds = d / (d * d).sum()  # dr/ds(y)
    points = [h0] if method == "eap" else [abl[0] + (k / STEPS) * (h0 - abl[0]) for k in range(STEPS)]
    grads = None
    for p in points:
        zs, hp = net.forward(p)
        y = hp[L]
        if kind == "mse":
            dy = ds
        else:  # through log-softmax: ds - softmax(y) * sum(ds)
            soft = np.exp(_log_softmax(y))
            dy = ds - soft * ds.sum(1, keepdims=True)
        g = net.backward(zs, dy)
        grads = g if grads is None else {k: grads[k] + g[k] for k in g}
    out = []
    for l, w in enumerate(net.w):
        gl = grads[l + 1] / len(points)
        out.append((w * (gl.T @ (abl[l] - hs[l]))).reshape(-1))
    return np.concatenate(out)


def _random_ckpt(task_name, hidden, seed):
    task = tasks.get_task(task_name)
    torch.manual_seed(seed)
    model = CoordMLP([task.shape[0], *hidden, task.shape[-1]], vocab=task.vocab, embed_dim=task.embed_dim)
    ckpt = model.to_checkpoint(task_name, "random", 0, {})
    g = torch.Generator().manual_seed(seed)
    # non-trivial positions, so that permutation bookkeeping is checked too
    ckpt["in_perm"] = torch.randperm(task.shape[0], generator=g)
    ckpt["out_perm"] = torch.randperm(task.shape[-1], generator=g)
    ckpt["weights"] = [w * 2 for w in ckpt["weights"]]  # livelier than nn.Linear's default init
    return ckpt


def _data(task_name, seed):
    task = tasks.get_task(task_name)
    g = torch.Generator().manual_seed(seed)
    if task.vocab is not None:
        clean = torch.randint(0, task.vocab, (N, task.shape[0] // task.embed_dim), generator=g)
        corrupt = torch.randint(0, task.vocab, clean.shape, generator=g)
    else:
        clean = torch.rand(N, task.shape[0], generator=g) * 2 - 1
        corrupt = torch.rand(N, task.shape[0], generator=g) * 2 - 1
    return {"clean": clean, "corrupt": corrupt}


CASES = [("independence", (5, 4), None), ("independence", (5, 4), 1),
         ("digits", (7, 6), None), ("digits", (7, 6), 3),
         ("modular_addition", (6, 5), None), ("modular_addition", (6, 5), 17)]


@pytest.mark.parametrize("task_name,hidden,output", CASES)
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_scores_equal_the_formulas_computed_by_hand(task_name, hidden, output, ablation):
    ckpt = _random_ckpt(task_name, hidden, seed=len(task_name))
    data = _data(task_name, seed=3)
    kind = tasks.get_task(task_name).metric
    half = N // 2
    for method in ("eap", "eap-ig"):
        d = discover(ckpt, method, top_k=5, ablation=ablation, output=output, data=data, device="cpu")
        ours = d.table.column("score").to_numpy()
        ref = hand_scores(ckpt, data["clean"][:half], data["corrupt"][:half], kind, ablation, output, method)
        assert np.abs(ref).max() > 1e-3, "a degenerate case would check nothing"
        scale = np.abs(ref).max()
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9 * scale, err_msg=f"{method} {ablation}")
        if output is not None and kind == "mse":
            # only output K's column counts: edges into the other outputs score exactly 0
            last = d.scores[-1]
            pos = int(torch.nonzero(ckpt["out_perm"] == output)[0, 0])
            others = torch.ones(last.shape[0], dtype=torch.bool)
            others[pos] = False
            assert bool((last[others] == 0).all())


def test_restoration_metric_is_one_at_the_full_model_and_zero_at_the_empty_circuit():
    ckpt = _random_ckpt("digits", (7, 6), seed=1)
    for ablation in ("resample", "zero", "mean"):
        for output in (None, 4):
            p = prepare(ckpt, ablation=ablation, output=output, data=_data("digits", 2)).problem
            r = restoration_metric(p)
            assert float(r(p.clean[-1])) == pytest.approx(1, abs=1e-12)
            assert float(r(p.circuit_output(p.graph.full_masks(False)))) == pytest.approx(0, abs=1e-12)


def test_eap_is_the_directional_derivative_of_r():
    """Moving one edge's input eps of the way to its ablated value changes r by eps * score."""
    ckpt = _random_ckpt("two_moons", (5, 4), seed=2)
    p = prepare(ckpt, data=_data("two_moons", 5)).problem
    r = restoration_metric(p)
    scores = discover(ckpt, "eap", top_k=1, data=_data("two_moons", 5), device="cpu").scores
    g = p.graph

    def r_moved(layer, j, i, eps):
        h = p.clean[0]
        for l, (w, b) in enumerate(zip(g.weights, g.biases)):
            z = h @ w.T + b
            if l == layer:
                z = z.clone()
                z[:, j] += eps * w[j, i] * (p.ablated[l][:, i] - p.clean[l][:, i])
            h = z if l == g.n_layers - 1 else torch.nn.functional.silu(z)
        return float(r(h))

    for layer, j, i in [(0, 1, 1), (1, 3, 0), (2, 1, 3)]:
        eps = 1e-6
        fd = (r_moved(layer, j, i, eps) - r_moved(layer, j, i, -eps)) / (2 * eps)
        assert abs(float(scores[layer][j, i]) - fd) < 1e-7 * max(1.0, abs(fd))
