"""BIMT-style network drawings: neurons at their coordinates, layers stacked bottom (inputs) to
top (outputs), line width by |w|, blue for positive and red for negative weights (the reference's
colours). 2-D sheets are drawn as skewed grids, one above the other, as in BIMT's MNIST figures.
With an edge mask, circuit edges are drawn in colour and all others in faint grey; a circuit with
more edges than a picture can show (`MAX_CIRCUIT_DRAWN`) is drawn by its top-scoring edges, and
the picture says how many of how many it shows. A legend names the colours; a classifier's
outputs are labelled with their class, a regression's y1, y2, ...; titles wrap, never clip."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

MIN_DRAWN = 1e-3  # edges below this fraction of max|W| are invisible anyway: skip them
# at most this many lines a layer (circuit edges first, then by |w|): a few hundred pixels cannot
# show more, and a dense 768-wide layer's 590k lines take matplotlib seconds
MAX_DRAWN_PER_LAYER = 20_000
# a circuit with more edges than this is drawn by its top-scoring ones (given the scores): past a
# few hundred, lines merge into a blot that hides which paths matter
MAX_CIRCUIT_DRAWN = 300
POSITIVE, NEGATIVE, OUTSIDE = (0.1, 0.2, 0.9, 1.0), (0.9, 0.1, 0.1, 1.0), (0.75, 0.75, 0.75, 0.25)


def neuron_xy(coords: torch.Tensor, layer: int) -> np.ndarray:
    """Page position of every neuron of a layer."""
    c = coords.double().numpy()
    if c.ndim == 1:
        return np.stack([c, np.full_like(c, layer)], 1)
    # a sheet: skew the grid so rows recede, and squash it into the band of its layer
    return np.stack([c[:, 0] + 0.25 * c[:, 1], layer + 0.6 * c[:, 1]], 1)


def is_wide(ckpt: dict) -> bool:
    return any(c.dim() == 2 for c in ckpt["coordinates"]) or max(ckpt["shape"]) > 40


def transformer_sheet(ckpt: dict) -> dict:
    """A `circuitry.transformer/1` checkpoint as the layered dict draw_network_on reads, BIMT's
    in-context picture: input, then per block residual -> attention neurons -> residual (-> MLP
    hidden -> residual), then outputs, each layer at its coordinates (workers.transformer). An
    attention neuron's line from a residual neuron is the strongest of its q, k and v weights."""
    m, w, c = ckpt["model"], ckpt["weights"], ckpt["coordinates"]
    emb = w["embed.W_E"] if m["d_vocab"] else w["embed.W_in"]
    coords, weights, names = [c["input"], c["resid"]], [emb.T], ["input", "resid"]
    for l in range(m["n_layers"]):
        a = f"blocks.{l}.attn."
        qkv = torch.stack([w[a + k] for k in ("W_Q", "W_K", "W_V")])  # [3, h, d_model, e]
        strongest = qkv.gather(0, qkv.abs().argmax(0, keepdim=True))[0]
        weights += [strongest.permute(0, 2, 1).reshape(-1, m["d_model"]), w[a + "W_O"].reshape(-1, m["d_model"]).T]
        coords += [c["attn"], c["resid"]]
        names += [f"attn {l}", "resid"]
        if m["d_mlp"]:
            p = f"blocks.{l}.mlp."
            weights += [w[p + "W_in"].T, w[p + "W_out"].T]
            coords += [c["mlp"], c["resid"]]
            names += [f"mlp {l}", "resid"]
    weights.append(w["unembed.W_U"].T)
    coords.append(c["output"])
    names.append("output")
    return {**{k: ckpt.get(k, "") for k in ("task", "regime", "seed")}, "coordinates": coords, "weights": weights,
            "shape": [len(x) for x in coords], "in_perm": torch.arange(len(coords[0])),
            "out_perm": torch.arange(len(coords[-1])), "layer_names": names}


def draw_network(ckpt: dict, path, edge_mask: list[torch.Tensor] | None = None, title: str = "",
                 edge_scores: list[torch.Tensor] | None = None) -> None:
    if ckpt.get("format") == "circuitry.transformer/1":
        ckpt = transformer_sheet(ckpt)
    fig, ax = plt.subplots(figsize=(7 if is_wide(ckpt) else 4, 1.6 * len(ckpt["coordinates"]) + 0.5))
    draw_network_on(ax, ckpt, edge_mask, title, edge_scores)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # `path` may be a file object
    plt.close(fig)


def top_circuit_edges(edge_mask: list[torch.Tensor], edge_scores: list[torch.Tensor],
                      n: int = MAX_CIRCUIT_DRAWN) -> list[torch.Tensor]:
    """The mask of the circuit's `n` edges of largest |score| (all of them if it has no more)."""
    kept = torch.cat([m.reshape(-1) for m in edge_mask]).bool()
    if int(kept.sum()) <= n:
        return edge_mask
    score = torch.cat([s.reshape(-1).abs().double() for s in edge_scores])
    score = torch.where(kept, score, torch.full_like(score, -1.0))
    top = torch.zeros_like(kept)
    top[torch.argsort(score, descending=True, stable=True)[:n]] = True
    out, at = [], 0
    for m in edge_mask:
        out.append(top[at:at + m.numel()].reshape(m.shape))
        at += m.numel()
    return out


def _wrap(title: str, ax) -> str:
    """Break the title to the axes' width (a long one was cut off at the figure's edge)."""
    width_in = ax.figure.get_figwidth() * ax.get_position().width
    chars = max(20, int(width_in * 72 / (9 * 0.55)))
    return "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))


def _output_labels(ckpt: dict) -> list[str]:
    """Class k for a classifier's outputs (digit tasks: the digit), y1, y2, ... otherwise."""
    from circuitry.tasks import TASKS

    task = TASKS.get(ckpt.get("task")) if ckpt.get("task") in TASKS else None
    classify = task is not None and task.kind == "classification"
    return [str(o) if classify else f"y{o + 1}" for o in ckpt["out_perm"].tolist()]


def draw_network_on(ax, ckpt: dict, edge_mask: list[torch.Tensor] | None = None, title: str = "",
                    edge_scores: list[torch.Tensor] | None = None) -> None:
    weights = [w.detach().double() for w in ckpt["weights"]]
    coords = ckpt["coordinates"]
    top = max(float(w.abs().max()) for w in weights) or 1.0
    wide = is_wide(ckpt)
    xy = [neuron_xy(c, l) for l, c in enumerate(coords)]
    shown_note = ""
    if edge_mask is not None and edge_scores is not None:
        n_kept = int(sum(int(m.sum()) for m in edge_mask))
        if n_kept > MAX_CIRCUIT_DRAWN:
            edge_mask = top_circuit_edges(edge_mask, edge_scores)
            shown_note = f"showing the top {MAX_CIRCUIT_DRAWN:,} of {n_kept:,} circuit edges by |score|"
    for l, w in enumerate(weights):
        mag = (w.abs() / top).numpy()
        live = mag > MIN_DRAWN
        in_circuit = edge_mask[l].numpy() if edge_mask is not None else None
        if in_circuit is not None:
            live |= in_circuit
        j, i = np.nonzero(live)
        if j.size > MAX_DRAWN_PER_LAYER:
            # mag <= 1, so + 2 ranks every circuit edge above every other
            rank = mag[j, i] + (2.0 * in_circuit[j, i] if in_circuit is not None else 0.0)
            pick = np.argsort(-rank, kind="stable")[:MAX_DRAWN_PER_LAYER]
            j, i = j[pick], i[pick]
        segments = np.stack([xy[l][i], xy[l + 1][j]], 1)
        widths = 0.2 + 2.0 * mag[j, i] if not wide else 0.05 + 1.0 * mag[j, i]
        colours = np.where((w.numpy()[j, i] > 0)[:, None], [POSITIVE], [NEGATIVE])
        if in_circuit is not None:
            kept = in_circuit[j, i]
            colours[~kept] = OUTSIDE
            widths = np.where(kept, widths + 0.3, np.minimum(widths, 0.4))
        else:
            colours[:, 3] = np.clip(0.15 + mag[j, i], 0, 1)
        order = np.argsort(widths)  # draw strong edges on top
        ax.add_collection(LineCollection(segments[order], linewidths=widths[order], colors=colours[order]))
    size = 12 if not wide else 2
    for l, p in enumerate(xy):
        ax.scatter(p[:, 0], p[:, 1], s=size, c="black", zorder=3)
    if coords[0].dim() == 1 and len(coords[0]) <= 32:
        for p, f in zip(xy[0], ckpt["in_perm"].tolist()):
            ax.text(p[0], p[1] - 0.25, f"x{f + 1}", ha="center", va="top", fontsize=8)
    if len(coords[-1]) <= 32:  # a line or the MNIST ring: each output named
        for p, label in zip(xy[-1], _output_labels(ckpt)):
            ax.text(p[0], p[1] + 0.2, label, ha="center", va="bottom", fontsize=8, color="darkgreen")
    for l, name in enumerate(ckpt.get("layer_names", [])):
        ax.text(1.04, l, name, ha="left", va="center", fontsize=7)
    if shown_note:
        ax.text(0.5, -0.02, shown_note, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    title = title or f"{ckpt.get('task', '')} / {ckpt.get('regime', '')} / seed {ckpt.get('seed', '')}"
    ax.set_title(_wrap(title, ax), fontsize=9)
    handles = [Line2D([], [], color=POSITIVE, lw=2, label="positive weight"),
               Line2D([], [], color=NEGATIVE, lw=2, label="negative weight")]
    if edge_mask is not None:
        handles.append(Line2D([], [], color=OUTSIDE[:3], lw=2, label="not in circuit"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), fontsize=7,
              frameon=False, handlelength=1.5, columnspacing=1.0)
    ax.autoscale()
    ax.margins(0.05, 0.12)
    ax.axis("off")


def input_reach(ckpt: dict, edge_mask: list[torch.Tensor]) -> torch.Tensor:
    """[n_outputs, n_inputs] bool: which input features reach each output through the circuit's
    edges (rows and columns in output/input feature order, through out_perm/in_perm)."""
    reach = torch.eye(edge_mask[-1].shape[0], dtype=torch.bool)  # output positions
    for mask in reversed(edge_mask):
        reach = (reach.float() @ mask.float()) > 0  # [n_out, n_l+1] @ [n_l+1, n_l]
    by_feature = torch.zeros_like(reach)
    by_feature[ckpt["out_perm"]] = reach
    result = torch.zeros_like(by_feature)
    result[:, ckpt["in_perm"]] = by_feature
    return result


def draw_input_reach(ckpt: dict, edge_mask: list[torch.Tensor], path: str | Path, grid: tuple[int, int]) -> None:
    """For image tasks: one small image per output class showing which input pixels the circuit
    reads for it (dark = read)."""
    reach = input_reach(ckpt, edge_mask)
    n = reach.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(1.2 * n, 1.5))
    for k, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(reach[k].reshape(grid).numpy(), cmap="Blues", vmin=0, vmax=1.2)
        ax.set_title(f"class {k}: {int(reach[k].sum())} px", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
