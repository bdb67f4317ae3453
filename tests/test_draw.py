"""Network drawings: what is drawn, not how it looks."""
import matplotlib.pyplot as plt
import torch
from matplotlib.collections import LineCollection

from circuitry.workers import draw
from circuitry.workers.model import CoordMLP


def test_a_big_layer_draws_its_circuit_edges_first_and_at_most_the_cap(monkeypatch):
    monkeypatch.setattr(draw, "MAX_DRAWN_PER_LAYER", 40)
    torch.manual_seed(0)
    ckpt = CoordMLP([3, 30, 2]).to_checkpoint("t", "r", 0, {})
    masks = [torch.zeros(w.shape, dtype=torch.bool) for w in ckpt["weights"]]
    masks[0].view(-1)[:25] = True  # 25 circuit edges among layer 0's 90: all of them drawn
    fig, ax = plt.subplots()
    draw.draw_network_on(ax, ckpt, masks)
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [len(c.get_segments()) for c in lines] == [40, 40]
    grey = (lines[0].get_colors()[:, 3] == 0.25).sum()  # faint: not in the circuit
    assert int(grey) == 40 - 25
    plt.close(fig)


def test_legend_class_labels_and_a_whole_title():
    torch.manual_seed(0)
    ckpt = CoordMLP([4, 6, 3]).to_checkpoint("two_moons", "bimt", 0, {})  # a classifier
    masks = [torch.ones(w.shape, dtype=torch.bool) for w in ckpt["weights"]]
    title = "independence/bimt acdc f>=0.9 (tau=0.0123) resample: 12/40 edges, a title longer than the figure"
    fig, ax = plt.subplots(figsize=(4, 4))
    draw.draw_network_on(ax, ckpt, masks, title)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["positive weight", "negative weight", "not in circuit"]
    texts = {t.get_text() for t in ax.texts}
    assert {"0", "1", "2"} <= texts  # the classes, not y1..y3
    shown = ax.get_title()
    assert "\n" in shown and shown.replace("\n", " ") == title
    plt.close(fig)


def test_a_dense_circuit_is_drawn_by_its_top_scoring_edges(monkeypatch):
    monkeypatch.setattr(draw, "MAX_CIRCUIT_DRAWN", 10)
    torch.manual_seed(0)
    ckpt = CoordMLP([5, 8, 2]).to_checkpoint("independence", "bimt", 0, {})
    masks = [torch.ones(w.shape, dtype=torch.bool) for w in ckpt["weights"]]
    scores = [torch.arange(w.numel(), dtype=torch.float64).reshape(w.shape) for w in ckpt["weights"]]
    top = draw.top_circuit_edges(masks, scores, 10)
    assert sum(int(m.sum()) for m in top) == 10
    assert bool(top[0].view(-1)[-10:].all()) and not bool(top[1].any())  # layer 0's scores 30..39 are the largest
    fig, ax = plt.subplots()
    draw.draw_network_on(ax, ckpt, masks, "t", edge_scores=scores)
    assert any("top 10 of 56 circuit edges" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_input_reach_draws_one_image_per_class_of_the_pixels_the_circuit_reads(tmp_path):
    """An image task's circuit as the input pixels each class reads: a PNG, and the reach it draws
    is exactly the inputs with a path to that output through the circuit."""
    torch.manual_seed(0)
    ckpt = CoordMLP([4, 3, 2]).to_checkpoint("t", "r", 0, {})
    masks = [torch.zeros(w.shape, dtype=torch.bool) for w in ckpt["weights"]]
    input0 = int(ckpt["in_perm"].argsort()[0])  # the position of input feature 0
    masks[0][1, input0] = True  # input feature 0 -> hidden position 1 -> output position of class 1
    masks[1][int(ckpt["out_perm"].argsort()[1]), 1] = True
    reach = draw.input_reach(ckpt, masks)
    assert reach.shape == (2, 4) and reach.sum() == 1 and reach[1, 0] == 1
    path = tmp_path / "reach.png"
    draw.draw_input_reach(ckpt, masks, path, (2, 2))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
