"""Grading a circuit: faithfulness (MIB's normalised f, CPR and CMD), sparsity, ground-truth
agreement (planted teacher edges, symbolic dependency sets) and, for classifiers, logit gap and
accuracy. Every function takes a `Problem` (workers.graph) and masks; nothing is recomputed from
files."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score

from circuitry.workers.graph import Graph, Problem

# MIB's edge fractions for the faithfulness curve, in percent.
CURVE_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


# f is undefined when ablating every edge moves the metric by no more than round-off: then
# (m(C) - m(empty)) / (m(N) - m(empty)) divides noise by noise (a collapsed model whose output
# ignores its edges has m(empty) ~ 1e-17).
F_UNDEFINED_RTOL = 1e-9


def normalized_faithfulness(m_circuit: float, m_empty: float, m_full: float = 0.0, scale: float = 0.0) -> float:
    """MIB's f = (m(C) - m(empty)) / (m(N) - m(empty)); m(N) = 0 under our metrics.

    NaN (undefined) when |m(empty) - m(N)| <= F_UNDEFINED_RTOL * max(|m(empty)|, |m(N)|, scale).
    `scale` is the size of the numbers the metric is computed from (`metric_scale`): with
    m(N) = 0 exactly, max(|m(empty)|, |m(N)|) alone would only catch an exact 0."""
    denom = m_full - m_empty
    if not (math.isfinite(denom) and math.isfinite(m_circuit)):
        return float("nan")
    if abs(denom) <= F_UNDEFINED_RTOL * max(abs(m_empty), abs(m_full), abs(scale)):
        return float("nan")
    return (m_circuit - m_empty) / denom


def metric_scale(problem: Problem) -> float:
    """The size of the terms the circuit metric subtracts, at the full model's output, so that
    round-off in the metric is ~ machine epsilon x this: MSE, the mean square of the outputs it
    reads; KL, the mean of |sum p log p| + |sum p y| + |logsumexp y| (the three terms of
    graph.Metric's formula); the Bernoulli KL of one output, |log q| + |log(1 - q)|; the logit
    difference, mean |w| . |y| over its normaliser (the terms of its dot product)."""
    m, y = problem.metric, problem.clean[-1].double()
    if m.kind == "logit_diff":
        return float((y.abs() * m.ld_w_t.T.abs()).sum(-1).mean() / m.ld_scale)
    if m.kind == "mse":
        cols = y if m.out_pos is None else y[:, m.out_pos]
        return float((cols ** 2).mean())
    if m.out_pos is not None:
        return float((m.lq1_full.abs() + m.lq0_full.abs()).double().mean())
    p = m.p_full.double()
    terms = m.neg_entropy_full.double().abs() + (p * y).sum(-1).abs() + torch.logsumexp(y, -1).abs()
    return float(terms.mean())


def edge_ranking(flat_scores: torch.Tensor) -> torch.Tensor:
    """Edge indices by decreasing |score|, ties to the earlier canonical edge (`top_k_masks`'s
    order; a caller that takes several top-k of the same scores sorts once: a sort of a
    600k-edge net's scores costs more than a forward pass)."""
    return torch.from_numpy(np.argsort(-np.abs(flat_scores.numpy()), kind="stable"))


def top_k_masks(graph: Graph, flat_scores: torch.Tensor, k: int, ranking: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Keep the k edges of largest |score|; ties go to the earlier canonical edge. `ranking`:
    `edge_ranking(flat_scores)`, when the caller has it."""
    keep = torch.zeros(flat_scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[(edge_ranking(flat_scores) if ranking is None else ranking)[:k]] = True
    return unflatten(graph, keep)


def unflatten(graph: Graph, flat: torch.Tensor) -> list[torch.Tensor]:
    off = graph.edge_offsets()
    return [flat[off[l]:off[l + 1]].reshape(w.shape).clone() for l, w in enumerate(graph.weights)]


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def faithfulness(problem: Problem, masks) -> dict:
    m_c = problem.circuit_metric(masks)
    m_e = problem.empty_metric
    return {"metric_circuit": m_c, "metric_empty": m_e, "metric_full": 0.0,
            "faithfulness": normalized_faithfulness(m_c, m_e, scale=metric_scale(problem))}


def faithfulness_curve(problem: Problem, flat_scores: torch.Tensor, ranking: torch.Tensor) -> dict:
    """f at MIB's edge fractions (top-|score| edges, `ranking` = `edge_ranking(flat_scores)`,
    sorted once by the caller for all its top-k) and the areas: CPR = area under f, CMD = area
    under |1 - f|, trapezoids over the edge fraction in [0, 1]."""
    g = problem.graph
    m_e = problem.empty_metric
    scale = metric_scale(problem)
    xs, fs = [], []
    for pct in CURVE_PERCENTS:
        k = int(round(pct / 100 * g.n_edges))
        masks = top_k_masks(g, flat_scores, k, ranking)
        fs.append(normalized_faithfulness(problem.circuit_metric(masks), m_e, scale=scale))
        xs.append(pct / 100)
    x, f = np.array(xs), np.array(fs)
    return {"curve_fractions": xs, "curve_faithfulness": fs,
            "cpr": float(np.trapezoid(f, x)), "cmd": float(np.trapezoid(np.abs(1 - f), x))}


def sparsity(masks) -> dict:
    total = sum(m.numel() for m in masks)
    kept = sum(int(m.sum()) for m in masks)
    # a node is kept when a kept edge touches it: as a sender (a column of the mask out of its
    # layer) or as a receiver (a row of the mask into it); hidden layers have both
    sends, receives = [m.any(0) for m in masks], [m.any(1) for m in masks]
    nodes = int(sends[0].sum()) + int(receives[-1].sum()) + sum(int((r | s).sum()) for r, s in zip(receives, sends[1:]))
    return {"n_edges_total": total, "n_edges_kept": kept, "edge_sparsity": 1 - kept / total,
            "n_nodes_kept": nodes}


def classification_figures(problem: Problem, masks, labels_pos: torch.Tensor | None) -> dict:
    """logit_gap = mean |full logit of the true class - circuit logit of it| (raw logit units);
    normalized_logit_gap = logit_gap / the empty circuit's logit gap (a net with larger logits
    has larger gaps by scale alone; NaN when the empty circuit's gap is 0); accuracies. Without
    labels the full model's own prediction stands in for the true class."""
    full = problem.clean[-1]
    target = full.argmax(1) if labels_pos is None else labels_pos
    idx = target[:, None]

    def gap(y: torch.Tensor) -> float:
        return float((full.gather(1, idx) - y.gather(1, idx)).abs().mean())

    circ = problem.circuit_output(masks)
    circuit_gap = gap(circ)
    empty_gap = gap(problem.empty_output)
    out = {"logit_gap": circuit_gap, "empty_logit_gap": empty_gap,
           "normalized_logit_gap": circuit_gap / empty_gap if empty_gap > 0 else float("nan"),
           "circuit_accuracy": float((circ.argmax(1) == target).double().mean()),
           "full_accuracy": float((full.argmax(1) == target).double().mean())}
    if labels_pos is None:
        out["accuracy_reference"] = "full model's predictions (no labels)"
    return out


def edge_agreement(true_edges: set, flat_scores: torch.Tensor, keep: torch.Tensor, graph: Graph,
                   edge_map=None) -> dict:
    """Precision/recall of the kept edges and ROC AUC of |score| against a true edge set of
    (layer, src_pos, dst_pos); `edge_map(l, i, j)` maps a student edge into the teacher's positions."""
    labels = []
    for l, w in enumerate(graph.weights):
        n_dst, n_src = w.shape
        for j in range(n_dst):
            for i in range(n_src):
                e = (l, i, j) if edge_map is None else edge_map(l, i, j)
                labels.append(e in true_edges)
    y = np.array(labels)
    keep_np = keep.numpy()
    tp = int((y & keep_np).sum())
    out = {"edge_precision": tp / max(1, int(keep_np.sum())), "edge_recall": tp / max(1, int(y.sum()))}
    s = np.abs(flat_scores.numpy())
    out["edge_roc_auc"] = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")
    return out


def match_hidden(student: Graph, teacher: Graph, x: torch.Tensor) -> list[np.ndarray]:
    """Per layer, student position -> teacher position. Inputs and outputs map through the
    permutations (features are fixed); hidden neurons by Hungarian matching on |correlation| of
    their activations on `x` (scipy's linear_sum_assignment)."""
    s_acts = student.forward(student.features(x))
    t_acts = teacher.forward(teacher.features(x))
    # input position p holds feature in_perm[p]; the teacher holds feature f at position t_inv[f]
    t_in_inv = np.argsort(teacher.in_perm.numpy())
    maps = [t_in_inv[student.in_perm.numpy()]]
    for l in range(1, student.n_layers):
        a, b = s_acts[l], t_acts[l]
        a = (a - a.mean(0)) / (a.std(0) + 1e-12)
        b = (b - b.mean(0)) / (b.std(0) + 1e-12)
        corr = (a.T @ b / a.shape[0]).abs().numpy()
        rows, cols = linear_sum_assignment(-corr)
        m = np.empty(corr.shape[0], dtype=np.int64)
        m[rows] = cols
        maps.append(m)
    t_out_inv = np.argsort(teacher.out_perm.numpy())
    maps.append(t_out_inv[student.out_perm.numpy()])
    return maps


def dependency_agreement(graph: Graph, masks, dependencies) -> dict:
    """Input features each output reaches through kept edges vs the task's dependency sets."""
    L = graph.n_layers
    reach = torch.eye(graph.shape[0], dtype=torch.bool)  # [n_l, n_inputs]: positions -> input positions
    for l in range(L):
        reach = (masks[l].double() @ reach.double()) > 0
    found = []
    for k in range(graph.shape[-1]):
        pos = int(torch.nonzero(graph.out_perm == k)[0, 0])
        found.append(sorted(int(graph.in_perm[p]) for p in torch.nonzero(reach[pos])[:, 0].tolist()))
    truth = [sorted(d) for d in dependencies]
    return {"dependencies_found": found, "dependencies_true": truth,
            "dependencies_match": found == truth}
