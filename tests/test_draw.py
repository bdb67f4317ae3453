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
