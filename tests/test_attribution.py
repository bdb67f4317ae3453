"""EAP scores are the first-order change of the task loss; EAP-IG averages along the input path."""
import torch
import torch.nn.functional as F

from workers.attribution import attribution_scores, task_loss
from workers.graph import Graph, Problem
from workers.model import CoordMLP

torch.set_num_threads(1)


def loss_with_edge_scaled(p: Problem, labels, layer, j, i, eps):
    """Task loss when receiver j's input from sender i moves eps of the way to its ablated value."""
    g, h = p.graph, p.clean[0]
    for l, (w, b) in enumerate(zip(g.weights, g.biases)):
        z = h @ w.T + b
        if l == layer:
            z = z.clone()
            z[:, j] += eps * w[j, i] * (p.ablated[l][:, i] - p.clean[l][:, i])
        h = z if l == g.n_layers - 1 else F.silu(z)
    return float(task_loss(p.kind, h, labels, p.out_pos))


def test_eap_is_the_directional_derivative_of_the_loss():
    torch.manual_seed(0)
    ckpt = CoordMLP([3, 5, 4, 3]).to_checkpoint("random", "random", 0, {})
    x, xc = torch.randn(20, 3), torch.randn(20, 3)
    for kind, labels, output in [("mse", torch.randn(20, 3, dtype=torch.float64), None),
                                 ("kl", torch.randint(0, 3, (20,)), None), ("kl", torch.randint(0, 3, (20,)), 2)]:
        p = Problem.build(Graph.from_checkpoint(ckpt), x, xc, kind, "resample", output)
        scores, _ = attribution_scores(p, labels, "eap")
        eps = 1e-6
        for layer, j, i in [(0, 1, 2), (1, 3, 0), (2, 2, 3)]:
            fd = (loss_with_edge_scaled(p, labels, layer, j, i, eps) - loss_with_edge_scaled(p, labels, layer, j, i, -eps)) / (2 * eps)
            assert abs(float(scores[layer][j, i]) - fd) < 1e-7 * max(1.0, abs(fd)), (kind, layer, j, i)
        ig, _ = attribution_scores(p, labels, "eap-ig", steps=1)  # one step at alpha = 1 is EAP
        assert all(torch.allclose(a, b) for a, b in zip(ig, scores))
