"""Circuit discovery on a `circuitry.transformer/1` checkpoint at head level (the entry point
workers.discover hands transformer checkpoints to).

    d = discover_transformer(ckpt, "acdc", 0.01)   # or target_f=0.9; methods as for MLPs
    write_transformer_discovery(d, out_dir)        # circuit.parquet, summary.json

The examples, the methods, the selection (threshold, top-k, edge fraction, target f) and the
score semantics are the MLP path's (workers.discover's module doc) on the head-level graph
(workers.transformer_graph): the discovery examples are the first half of the model's own test
split (capped at MAX_EXAMPLES_PER_HALF), the evaluation examples the second half; the metric is
KL over the task's scored positions (classification) or MSE there (regression).

circuit.parquet: one row per edge in EAP-IG's order, columns `sender`, `receiver` (EAP-IG's node
names; a head's inputs `a1.h0<k>`), `edge` (`sender->receiver`), `score` (float64), `in_circuit`;
schema metadata as for MLPs. summary.json: the MLP's fields (n_edges_total, n_edges_kept,
edge_sparsity, n_nodes_kept, faithfulness, metric_*, the faithfulness curve for score methods,
target fields, evaluation, discovery_seconds, forward_examples, edges_tested, edges_per_second),
the circuit's accuracy at the scored positions beside the full model's, and `ground_truth` where
the task knows its mechanism (tasks.sequence.CircuitTruth): induction's mechanism is
`recovered` when the circuit keeps an edge `a0.hX -> a1.hY<k>` and `a1.hY -> logits` for the
same Y (`k_composition` lists them), beside the heads that score highest as previous-token (layer
0) and induction (layer 1) heads on the attention patterns (the task's `head_scores`); tracr
programs' fixed nodes and edges, with the kept fraction of each.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from circuitry.tasks import get_task
from circuitry.workers.acdc import transformer as ta
from circuitry.workers.discover_config import DiscoverConfig, DiscoveryInputError
from circuitry.workers.discovery_data import split_examples
from circuitry.workers.evaluate import CURVE_PERCENTS, normalized_faithfulness
from circuitry.workers.outputs import json_bytes, write_files
from circuitry.workers.target import Probe, search_tau, search_top_k
from circuitry.workers.transformer_attribution import attribution_scores
from circuitry.workers.transformer_graph import TransformerGraph, TransformerProblem, Weights

FORMAT = "circuitry.transformer/1"


def is_transformer(ckpt: dict) -> bool:
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


@dataclass
class TransformerDiscovery:
    table: pa.Table
    summary: dict
    mask: torch.Tensor  # [R, S] bool
    scores: torch.Tensor  # [R, S] float64
    config: dict
    graph: TransformerGraph


def graph_of(ckpt: dict) -> TransformerGraph:
    from circuitry.workers.transformer import Transformer

    return TransformerGraph(Weights.from_model(Transformer.from_checkpoint(ckpt)))


def _problems(task, graph, ckpt, ablation, data, seed):
    (c, k, labels), (ec, ek, elabels), info = split_examples(task, ckpt, data, seed)
    kind = "mse" if task.kind == "regression" else "kl"
    pos = torch.tensor(task.positions, dtype=torch.long)
    problem = TransformerProblem.build(graph, c, k, kind, pos, ablation)
    evaluation = TransformerProblem.build(graph, ec, ek, kind, pos, ablation)
    if ablation == "mean":  # the circuit's ablation is fixed by the discovery examples
        n = evaluation.n_examples
        evaluation = replace(evaluation, ablated=problem.ablated[:, :1].expand(-1, n, -1, -1).clone())
    return problem, evaluation, labels, elabels, info


def _scale(p: TransformerProblem) -> float:
    """Size of the numbers the metric subtracts (round-off ~ eps x this; evaluate.metric_scale)."""
    m = p.metric
    yp = p.y_full[:, m.positions]
    if m.kind == "kl":
        return float((m.neg_entropy.abs() + (m.p_full * yp).sum(-1).abs() + torch.logsumexp(yp, -1).abs()).mean())
    return float(yp.square().mean())


def faithfulness(p: TransformerProblem, mask) -> dict:
    m_c, m_e = p.circuit_metric(mask), p.empty_metric
    return {"metric_circuit": m_c, "metric_empty": m_e, "metric_full": 0.0,
            "faithfulness": normalized_faithfulness(m_c, m_e, scale=_scale(p))}


def _ranking(g: TransformerGraph, scores: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.argsort(-np.abs(g.flat(scores).numpy()), kind="stable"))


def _top_k(g: TransformerGraph, ranking, k: int) -> torch.Tensor:
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[ranking[:k]] = True
    return g.unflat(keep)


def _curve(p: TransformerProblem, ranking) -> dict:
    xs, fs = [pct / 100 for pct in CURVE_PERCENTS], []
    scale, m_e = _scale(p), p.empty_metric
    for x in xs:
        fs.append(normalized_faithfulness(p.circuit_metric(_top_k(p.graph, ranking, int(round(x * p.graph.n_edges)))),
                                          m_e, scale=scale))
    f = np.array(fs)
    return {"curve_fractions": xs, "curve_faithfulness": fs,
            "cpr": float(np.trapezoid(f, xs)), "cmd": float(np.trapezoid(np.abs(1 - f), xs))}


def _accuracy(task, p: TransformerProblem, mask, labels) -> dict:
    if task.kind != "classification" or labels is None:
        return {}
    pos = p.metric.positions
    acc = lambda y: float((y[:, pos].argmax(-1) == labels).double().mean())  # noqa: E731
    return {"full_accuracy": acc(p.y_full), "circuit_accuracy": acc(p.circuit_output(mask))}


def sparsity(g: TransformerGraph, mask) -> dict:
    total, n_kept = g.n_edges, int((mask & g.real).sum())
    return {"n_edges_total": total, "n_edges_kept": n_kept, "edge_sparsity": 1 - n_kept / total,
            "n_nodes_kept": len(_kept_nodes(g, mask))}


def ground_truth(task, p: TransformerProblem, mask) -> dict:
    truth = task.truth
    if truth is None:
        return {}
    g = p.graph
    kept = lambda s, r: bool(mask[g.receiver_index(r), g.sender_index(s)])  # noqa: E731
    out = {"mechanism": truth.mechanism}
    if truth.roles.get("previous_token") == 0 and truth.roles.get("induction") == 1:
        from circuitry.tasks.induction import head_scores

        pats = g.patterns(p.clean)
        prev, _ = head_scores(pats[0])
        _, ind = head_scores(pats[1], tokens=p.inputs)  # from the tokens: any repeat offset
        ph, ih = int(prev.argmax()), int(ind.argmax())
        H = g.w.n_heads
        # the mechanism, whichever heads play it: a layer-0 head feeding a layer-1 head's keys,
        # that layer-1 head writing to the logits
        chains = [f"a0.h{x}->a1.h{y}<k>" for y in range(H) if kept(f"a1.h{y}", "logits")
                  for x in range(H) if kept(f"a0.h{x}", f"a1.h{y}<k>")]
        out.update(previous_token_head=f"a0.h{ph}", induction_head=f"a1.h{ih}",
                   previous_token_score=float(prev[ph]), induction_score=float(ind[ih]),
                   k_composition=chains,
                   keeps_top_heads_k_composition=kept(f"a0.h{ph}", f"a1.h{ih}<k>"),
                   keeps_induction_to_logits=kept(f"a1.h{ih}", "logits"),
                   recovered=bool(chains))
    if truth.edges:
        hits = [e for e in truth.edges if kept(*e)]
        out.update(truth_edges=len(truth.edges), truth_edges_kept=len(hits),
                   truth_edge_recall=len(hits) / len(truth.edges))
    if truth.nodes:
        hits = truth.nodes & _kept_nodes(g, mask)
        out.update(truth_nodes=len(truth.nodes), truth_nodes_kept=len(hits),
                   truth_node_recall=len(hits) / len(truth.nodes))
    return {"ground_truth": out}


def _kept_nodes(g: TransformerGraph, mask) -> set[str]:
    kept = mask & g.real
    return ({g.senders[s] for s in torch.nonzero(kept.any(0))[:, 0].tolist()}
            | {g.receivers[r].split("<")[0] for r in torch.nonzero(kept.any(1))[:, 0].tolist()})


def discover_transformer(ckpt: dict, method: str, threshold: float | None = None, *, ablation: str = "resample",
                         data: dict | None = None, seed: int = 0, top_k: int | None = None,
                         edge_fraction: float | None = None, target_f: float | None = None,
                         order: str = "ascending", progress: Callable[[int], None] | None = None) -> TransformerDiscovery:
    """Find the circuit of a transformer checkpoint with `method` (module doc). CPU, float64."""
    DiscoverConfig(method, threshold, top_k, edge_fraction, target_f, order, ablation, None, seed).check()
    if order != "ascending":
        raise DiscoveryInputError("--order", "transformer ACDC visits senders in ascending order only; drop --order")
    try:
        task = get_task(ckpt["task"])
    except ValueError as e:
        raise DiscoveryInputError("--model", f"{e}; the checkpoint's task must be a registered task") from None
    if task.transformer is None:
        raise DiscoveryInputError("--model", f"task {task.name!r} is not a transformer task")
    t0 = time.perf_counter()
    g = graph_of(ckpt)
    problem, evaluation, labels, elabels, info = _problems(task, g, ckpt, ablation, data, seed)
    search, ranking, tested = None, None, None
    if method == "acdc":
        if target_f is not None:
            cost = {"spent": 0, "tested": 0}

            def probe(tau):
                res = ta.acdc(problem, tau, progress=progress)
                cost["spent"] += res.forward_examples
                cost["tested"] += res.edges_tested
                return Probe(faithfulness(problem, res.mask)["faithfulness"], int((res.mask & g.real).sum()), res)

            defined = not math.isnan(faithfulness(problem, g.full_mask())["faithfulness"])
            search = search_tau(probe, target_f, problem.empty_metric, g.n_edges, defined=defined)
            res, threshold, spent, tested = search.result, search.found, cost["spent"], cost["tested"]
        else:
            res = ta.acdc(problem, threshold, progress=progress)
            spent, tested = res.forward_examples, res.edges_tested
        mask, scores = res.mask & g.real, res.scores
    else:
        if method == "exact":
            scores, spent = ta.exact_scores(problem, progress=progress)
            tested = g.n_edges
        else:
            scores, spent = attribution_scores(problem, method)
        ranking = _ranking(g, scores)
        if target_f is not None:
            search = search_top_k(lambda k: Probe(faithfulness(problem, _top_k(g, ranking, k))["faithfulness"], k),
                                  target_f, g.n_edges)
            top_k = int(search.found)
        if threshold is not None:
            mask = (scores.abs() >= threshold) & g.real
        else:
            k = top_k if top_k is not None else int(round(edge_fraction * g.n_edges))
            mask = _top_k(g, ranking, min(k, g.n_edges))
    seconds = time.perf_counter() - t0
    config = {"method": method, "threshold": threshold, "top_k": top_k, "edge_fraction": edge_fraction,
              "target_f": target_f, "order": order, "ablation": ablation, "metric": problem.metric.kind,
              "task": task.name, "regime": str(ckpt.get("regime", "")), "seed": int(ckpt.get("seed", 0)),
              "discovery_seed": seed, "output": None, "model_id": transformer_model_id(ckpt),
              "graph": "heads"}

    def grade(p, lab):
        out = {**faithfulness(p, mask), **_accuracy(task, p, mask, lab)}
        if ranking is not None:
            out.update(_curve(p, ranking))
        return out

    summary = {**config, **info, "n_examples": problem.n_examples, **sparsity(g, mask), **grade(problem, labels),
               "target_f": target_f,
               "tau_found": float(search.found) if search is not None and method == "acdc" else None,
               "tau_above": float(search.above) if search is not None and method == "acdc" and search.above is not None else None,
               "target_reached": None if search is None else bool(search.reached),
               "search": None if search is None else search.record(),
               **ground_truth(task, problem, mask)}
    summary["evaluation"] = grade(evaluation, elabels)
    summary.update(discovery_seconds=seconds, forward_examples=int(spent),
                   edges_tested=None if tested is None else int(tested),
                   edges_per_second=g.n_edges / seconds if seconds > 0 else float("nan"), device="cpu")
    return TransformerDiscovery(circuit_table(g, mask, scores, config), summary, mask, scores, config, g)


def transformer_model_id(ckpt: dict) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps(ckpt["model"], sort_keys=True).encode())
    for name in sorted(ckpt["weights"]):
        h.update(name.encode())
        h.update(ckpt["weights"][name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def circuit_table(g: TransformerGraph, mask, scores, config: dict) -> pa.Table:
    senders, receivers = g.edge_names()
    schema = pa.schema([("sender", pa.string()), ("receiver", pa.string()), ("edge", pa.string()),
                        ("score", pa.float64()), ("in_circuit", pa.bool_())],
                       metadata={k: ("" if v is None else str(v)) for k, v in config.items()})
    cols = [senders, receivers, [f"{s}->{r}" for s, r in zip(senders, receivers)],
            g.flat(scores).numpy().astype(np.float64), g.flat(mask).numpy()]
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, schema)], schema=schema)


def write_transformer_discovery(d: TransformerDiscovery, out_dir) -> Path:
    """OUT/circuit.parquet, then OUT/summary.json (last: it marks the result finished)."""
    sink = pa.BufferOutputStream()
    pq.write_table(d.table, sink)
    return write_files({"circuit.parquet": sink.getvalue().to_pybytes(), "summary.json": json_bytes(d.summary)}, out_dir)


def export_eap_ig_graph(d: TransformerDiscovery, path) -> Path:
    """EAP-IG's graph JSON (`Graph.from_json`): cfg (n_layers, n_heads, parallel_attn_mlp, d_model),
    nodes {name: {"in_graph"}}, edges {"sender->receiver": {"score", "in_graph"}} in its names."""
    g = d.graph
    nodes = {name: False for name in g.senders} | {"logits": True}
    kept = _kept_nodes(g, d.mask)
    for n in kept:
        nodes[n] = True
    s, r = g.edge_names()
    flat_s, flat_m = g.flat(d.scores).tolist(), g.flat(d.mask).tolist()
    edges = {f"{a}->{b}": {"score": float(sc), "in_graph": bool(k)} for a, b, sc, k in zip(s, r, flat_s, flat_m)}
    cfg = {"n_layers": g.w.n_layers, "n_heads": g.w.n_heads, "parallel_attn_mlp": False, "d_model": g.w.d_model}
    nodes_json = {n: {"in_graph": v} for n, v in nodes.items()}
    path = Path(path)
    write_files({path.name: json.dumps({"cfg": cfg, "nodes": nodes_json, "edges": edges}).encode()}, path.parent)
    return path
