"""circuit.parquet: a circuit as one row per edge of the neuron graph, and back.

Rows are in the canonical edge order (weight matrix l, then dst position, then src position:
workers.graph): src, dst ("L{layer}.{pos}"), src_layer, src_pos, dst_layer, dst_pos, weight,
score, in_circuit; the discovery's settings are the schema's metadata (docs/formats.md).
`circuit_table` writes a circuit's masks and scores; `load_circuit` reads the masks back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from circuitry.workers.evaluate import flatten
from circuitry.workers.graph import Graph

COLUMNS = ("src", "dst", "src_layer", "src_pos", "dst_layer", "dst_pos", "weight", "score", "in_circuit")


def circuit_table(graph: Graph, masks, flat_scores: torch.Tensor, config: dict) -> pa.Table:
    """circuit.parquet's table: one row per edge in canonical order, schema metadata attached."""
    src_layer, src_pos, dst_pos, weight = [], [], [], []
    for l, w in enumerate(graph.weights):
        n_dst, n_src = w.shape
        src_layer.append(np.full(n_dst * n_src, l, dtype=np.int32))
        dst_pos.append(np.repeat(np.arange(n_dst, dtype=np.int32), n_src))
        src_pos.append(np.tile(np.arange(n_src, dtype=np.int32), n_dst))
        weight.append(w.reshape(-1).numpy().astype(np.float32))
    sl, sp, dp = np.concatenate(src_layer), np.concatenate(src_pos), np.concatenate(dst_pos)
    dl = sl + 1

    def names(layer, pos):  # "L{layer}.{pos}", built in Arrow (a Python f-string per edge is slow on big nets)
        return pc.binary_join_element_wise("L", pc.cast(pa.array(layer), pa.string()), ".",
                                           pc.cast(pa.array(pos), pa.string()), "")
    src, dst = names(sl, sp), names(dl, dp)
    schema = pa.schema([
        ("src", pa.string()), ("dst", pa.string()),
        ("src_layer", pa.int32()), ("src_pos", pa.int32()), ("dst_layer", pa.int32()), ("dst_pos", pa.int32()),
        ("weight", pa.float32()), ("score", pa.float64()), ("in_circuit", pa.bool_()),
    ], metadata={k: ("" if v is None else str(v)) for k, v in config.items()})
    cols = [src, dst, sl, sp, dl.astype(np.int32), dp, np.concatenate(weight),
            flat_scores.numpy().astype(np.float64), flatten(masks).numpy()]
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, schema)], schema=schema)


def load_circuit(path: str | Path, shape: list[int] | None = None) -> list[torch.Tensor]:
    """A circuit.parquet's per-layer boolean masks ([n_{l+1}, n_l], True = in the circuit), the
    inverse of `circuit_table`. `shape` (the model's layer widths) is read off the table's
    positions when not given; give it where the last layer's highest positions may have no row."""
    t = pq.read_table(path, columns=["src_layer", "src_pos", "dst_pos", "in_circuit"])
    layer, src, dst = (t[c].to_numpy() for c in ("src_layer", "src_pos", "dst_pos"))
    keep = t["in_circuit"].to_numpy(zero_copy_only=False)
    if shape is None:
        n_layers = int(layer.max()) + 1 if len(layer) else 0
        shape = [int(src[layer == l].max()) + 1 for l in range(n_layers)]
        shape.append(int(dst[layer == n_layers - 1].max()) + 1 if n_layers else 0)
    masks = [torch.zeros(shape[l + 1], shape[l], dtype=torch.bool) for l in range(len(shape) - 1)]
    for l in range(len(masks)):
        rows = (layer == l) & keep
        masks[l][torch.as_tensor(dst[rows].astype(np.int64)), torch.as_tensor(src[rows].astype(np.int64))] = True
    return masks
