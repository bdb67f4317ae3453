"""The anatomy of a trained network: which inputs reach which outputs once small weights are
pruned. BIMT's headline result for `independence` is a network that splits into two independent
pieces, {x1,x3}->y1 and {x2,x4}->y2; this module makes that checkable."""
from __future__ import annotations

import torch


def pruned_components(ckpt: dict, fraction: float) -> list[tuple[frozenset[int], frozenset[int]]]:
    """Connected components of the graph of edges with |w| > fraction * max|W|, each as
    (input features, outputs) it contains (0-based feature ids, through in_perm/out_perm).
    Components that touch neither an input nor an output are left out (dead pieces)."""
    weights = ckpt["weights"]
    top = max(float(w.abs().max()) for w in weights)
    offsets = [0]
    for n in ckpt["shape"]:
        offsets.append(offsets[-1] + n)
    parent = list(range(offsets[-1]))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for l, w in enumerate(weights):
        for j, i in torch.nonzero(w.abs() > fraction * top).tolist():
            parent[find(offsets[l] + i)] = find(offsets[l + 1] + j)

    n_layers = len(ckpt["shape"])
    inputs, outputs = {}, {}
    for p, feature in enumerate(ckpt["in_perm"].tolist()):
        inputs.setdefault(find(offsets[0] + p), set()).add(feature)
    for p, out in enumerate(ckpt["out_perm"].tolist()):
        outputs.setdefault(find(offsets[n_layers - 1] + p), set()).add(out)
    # an input or output with no surviving edge is its own trivial component: leave it out
    connected = {find(offsets[l + 1] + j) for l, w in enumerate(weights)
                 for j, _ in torch.nonzero(w.abs() > fraction * top).tolist()}
    roots = sorted((set(inputs) | set(outputs)) & connected)
    return [(frozenset(inputs.get(r, ())), frozenset(outputs.get(r, ()))) for r in roots]
