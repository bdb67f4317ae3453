"""A circuit as GraphML, the graph format that networkx, Gephi, Cytoscape and yEd load.

Why not EAP-IG's JSON: EAP-IG's `Graph.from_json` rebuilds a *transformer* graph (it needs a
HookedTransformer config and node names such as `a0.h1`, `m3`, `logits`), so a neuron-level MLP
graph cannot be expressed in it; GraphML carries any graph with typed attributes.

The file holds every neuron of the network as a node and exactly the circuit's edges:
- graph: the circuit's metadata from circuit.parquet (method, threshold, ablation, metric, task,
  regime, seed, model_id) and the edge counts;
- node `L{layer}.{position}`: `layer`, `position`, `coordinate_x` (and `coordinate_y` on 2-D sheets)
  from the checkpoint, `feature` (inputs: the input feature at that position, from in_perm;
  outputs: the output index, from out_perm; hidden: -1), `in_circuit` (an endpoint of a kept edge);
- edge src -> dst: `weight`, `score` (the method's score, see circuit.parquet) and `layer`.
"""
from __future__ import annotations

import io
from pathlib import Path

import networkx as nx
import pyarrow as pa

from circuitry.workers.files import write_files

GRAPH_KEYS = ("method", "threshold", "ablation", "metric", "task", "regime", "seed", "model_id")


def circuit_graph(table: pa.Table, ckpt: dict) -> nx.DiGraph:
    """The circuit of `table` (circuit.parquet's rows) on the network of `ckpt` as a DiGraph."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    g = nx.DiGraph(**{k: meta[k] for k in GRAPH_KEYS if k in meta})
    shape = list(ckpt["shape"])
    last = len(shape) - 1
    for layer, n in enumerate(shape):
        coords = ckpt["coordinates"][layer].double()
        perm = ckpt["in_perm"] if layer == 0 else ckpt["out_perm"] if layer == last else None
        for pos in range(n):
            c = coords[pos].reshape(-1).tolist()
            attrs = {"layer": layer, "position": pos, "coordinate_x": c[0],
                     "feature": int(perm[pos]) if perm is not None else -1, "in_circuit": False}
            if len(c) > 1:
                attrs["coordinate_y"] = c[1]
            g.add_node(f"L{layer}.{pos}", **attrs)
    rows = table.filter(table["in_circuit"]).to_pydict()
    for src, dst, layer, w, s in zip(rows["src"], rows["dst"], rows["src_layer"], rows["weight"], rows["score"]):
        g.add_edge(src, dst, weight=float(w), score=float(s), layer=int(layer))
        g.nodes[src]["in_circuit"] = g.nodes[dst]["in_circuit"] = True
    g.graph.update(n_edges_total=table.num_rows, n_edges_kept=g.number_of_edges())
    return g


def export_graphml(table: pa.Table, ckpt: dict, path) -> Path:
    """Write circuit_graph(table, ckpt) to `path` (temporary name, then renamed)."""
    path = Path(path)
    buf = io.BytesIO()
    nx.write_graphml(circuit_graph(table, ckpt), buf)
    write_files({path.name: buf.getvalue()}, path.parent)
    return path
