"""Fast ACDC and exact scores against their literal definitions, on random and hand-built nets."""
import math

import pytest
import torch

from circuitry.workers.acdc import acdc, acdc_naive, exact_naive, exact_scores
from circuitry.workers.graph import Graph, Problem
from circuitry.workers.model import CoordMLP

torch.set_num_threads(1)


def random_checkpoint(shape, seed, zero_fraction=0.3, scale=2.0, shuffle=True):
    torch.manual_seed(seed)
    ckpt = CoordMLP(shape).to_checkpoint("random", "random", seed, {})
    # exact zeros exercise the "silent edge" path (increase exactly 0), scale makes effects uneven
    ckpt["weights"] = [w * (torch.rand_like(w) > zero_fraction) * scale for w in ckpt["weights"]]
    if shuffle:
        ckpt["in_perm"] = torch.randperm(shape[0])
        ckpt["out_perm"] = torch.randperm(shape[-1])
    return ckpt


def problem_for(ckpt, kind, ablation, output, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ckpt["shape"][0], generator=g)
    xc = torch.randn(n, ckpt["shape"][0], generator=g)
    return Problem.build(Graph.from_checkpoint(ckpt), x, xc, kind, ablation, output)


def tau_between(scores, q):
    """A tau at quantile q of the positive exact scores, halfway between two of them: a tau equal to
    a score ties with that edge's increase at rounding level (the first edge a receiver tries is
    measured against the full model), and a tie is decided by rounding in any implementation."""
    s = torch.sort(scores[scores > 0]).values
    k = min(max(1, int(q * s.numel())), s.numel() - 1)
    return float(s[k - 1] + s[k]) / 2


def same_masks(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


CASES = [(kind, ablation, output) for kind in ("mse", "kl") for ablation in ("resample", "zero", "mean")
         for output in (None, 1)] + [("logit_diff", ablation, None) for ablation in ("resample", "zero")]


@pytest.mark.parametrize("kind,ablation,output", CASES)
def test_acdc_equals_naive_sequential_definition(kind, ablation, output):
    rng = torch.Generator().manual_seed(CASES.index((kind, ablation, output)))
    for seed in range(3):
        shape = [4, 6, 5, 3] if seed != 2 else [3, 5, 4, 6, 4]
        p = problem_for(random_checkpoint(shape, seed), kind, ablation, output)
        ex, _ = exact_scores(p)
        q = float(torch.rand(1, generator=rng)) * 0.8 + 0.1
        tau = tau_between(ex, q)
        # a tiny batch budget forces many speculative rounds and chunk boundaries
        for budget in (1, 32 * 6 * 3, 1 << 22):
            fast = acdc(p, tau, batch_elements=budget)
            naive = acdc_naive(p, tau)
            assert same_masks(fast.masks, naive.masks), (seed, tau, budget)
            for a, b in zip(fast.scores, naive.scores):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        kept = sum(int(m.sum()) for m in fast.masks)
        assert 0 < kept < sum(m.numel() for m in fast.masks)  # a non-trivial circuit was tested


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_acdc_receiver_whose_every_edge_is_silent(kind):
    """A receiver whose in-edges all have zero weight (every candidate silent: decided without a
    round) and a sender with no out-edges: the naive circuit and scores, at tau 0 and above."""
    ckpt = random_checkpoint([4, 6, 5, 3], 1)
    ckpt["weights"][1][2] = 0.0
    ckpt["weights"][0][:, 1] = 0.0
    p = problem_for(ckpt, kind, "resample", None)
    ex, _ = exact_scores(p)
    for tau in (0.0, tau_between(ex, 0.5)):
        fast, naive = acdc(p, tau), acdc_naive(p, tau)
        assert same_masks(fast.masks, naive.masks), tau
        assert not bool(fast.masks[1][2].any()) if tau > 0 else bool(fast.masks[1][2].all())
        for a, b in zip(fast.scores, naive.scores):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_acdc_tau_zero_keeps_exactly_the_edges_with_an_effect(kind):
    """tau = 0: silent edges (zero weight) have increase exactly 0 and are kept, like the naive."""
    p = problem_for(random_checkpoint([4, 6, 5, 3], 7, zero_fraction=0.5), kind, "zero", None)
    fast, naive = acdc(p, 0.0), acdc_naive(p, 0.0)
    assert same_masks(fast.masks, naive.masks)
    # zero weights are silent: increase exactly 0, not < 0, so the edge stays
    zero_w = [w == 0 for w in p.graph.weights]
    assert all(bool(m[z].all()) for m, z in zip(fast.masks, zero_w))
    assert all(bool((s[z] == 0).all()) for s, z in zip(fast.scores, zero_w))


def test_acdc_progress_counts_every_edge():
    p = problem_for(random_checkpoint([4, 6, 5, 3], 1), "mse", "resample", None)
    done = []
    acdc(p, 1e-3, progress=done.append)
    assert sum(done) == p.graph.n_edges


@pytest.mark.parametrize("kind,ablation,output", [("mse", "resample", None), ("kl", "mean", 2), ("kl", "zero", None)])
def test_exact_chunks_concatenate_to_one_pass(kind, ablation, output):
    p = problem_for(random_checkpoint([4, 7, 6, 3], 3), kind, ablation, output)
    whole, _ = exact_scores(p)
    E = p.graph.n_edges
    for size in (1, 5, 13, 64, E):
        parts = torch.cat([exact_scores(p, a, min(E, a + size))[0] for a in range(0, E, size)])
        assert torch.equal(parts, whole), size
    torch.testing.assert_close(whole, exact_naive(p), rtol=0, atol=1e-12)
    assert (whole >= -1e-15).all() and (whole > 0).any()


def hand_built_checkpoint():
    """Two parallel chains x0 -> n0 -> n0 -> y0 and x1 -> n1 -> n1 -> y1 with strong weights, a
    third chain from x2 that reaches no output, and weak (1e-4) cross-talk everywhere else."""
    shape = [3, 3, 3, 2]
    torch.manual_seed(0)
    weights, biases = [], []
    for l in range(3):
        n_out, n_in = shape[l + 1], shape[l]
        w = 1e-4 * torch.randn(n_out, n_in)
        for k in range(min(n_out, n_in)):
            w[k, k] = 1.5
        weights.append(w)
        biases.append(torch.zeros(n_out))
    ckpt = CoordMLP(shape).to_checkpoint("random", "hand", 0, {})
    ckpt["weights"], ckpt["biases"] = weights, biases
    return ckpt


def test_hand_built_circuit_is_recovered():
    ckpt = hand_built_checkpoint()
    chain = {(l, k, k) for l in range(3) for k in range(2)}  # (layer, src, dst)
    for ablation in ("resample", "zero", "mean"):
        p = problem_for(ckpt, "mse", ablation, None, n=64)
        res = acdc(p, 1e-4)
        found = {(l, i, j) for l, m in enumerate(res.masks) for j, i in torch.nonzero(m).tolist()}
        assert found == chain, ablation
        ex, _ = exact_scores(p)
        top = set(torch.argsort(ex, descending=True)[:6].tolist())
        offsets = p.graph.edge_offsets()
        assert top == {offsets[l] + j * p.graph.shape[l] + i for l, i, j in chain}
    # output 1 alone: only the second chain
    p = problem_for(ckpt, "mse", "resample", 1, n=64)
    res = acdc(p, 1e-4)
    found = {(l, i, j) for l, m in enumerate(res.masks) for j, i in torch.nonzero(m).tolist()}
    assert found == {(l, 1, 1) for l in range(3)}


def test_acdc_guesses_only_affect_speed(monkeypatch):
    """The quadratic model only guesses decisions: a wrong (negated) model and one-row tiles give
    the same circuit as the naive definition, just with more wasted rows."""
    from circuitry.workers.acdc import downstream, guesses, speculate
    p = problem_for(random_checkpoint([5, 7, 6, 3], 11), "kl", "resample", None)
    ex, _ = exact_scores(p)
    tau = tau_between(ex, 0.5)
    naive = acdc_naive(p, tau)
    good = acdc(p, tau)
    real_model, real_derivatives = guesses.metric_model, downstream.Downstream.derivatives
    monkeypatch.setattr(speculate, "metric_model",
                        lambda lo, mid, hi, eps: tuple(-t for t in real_model(lo, mid, hi, eps)))
    monkeypatch.setattr(downstream.Downstream, "derivatives", lambda *a: tuple(-t for t in real_derivatives(*a)))
    real_exact = guesses.ExactOutput.__call__
    monkeypatch.setattr(guesses.ExactOutput, "__call__", lambda self, g, first=0: -real_exact(self, g, first))
    monkeypatch.setattr(downstream, "TILE_ELEMENTS", {"cpu": 1})
    bad = acdc(p, tau)
    assert same_masks(good.masks, naive.masks) and same_masks(bad.masks, naive.masks)
    for a, b in zip(bad.scores, naive.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert bad.forward_examples > good.forward_examples


def test_guesses_are_the_sequential_answer_on_the_prefix_they_return():
    """`guess`'s sweeps (each starting where the agreed prefix ends) return exactly the literal
    sequential decisions g_k = [pred_k(g_<k) < tau] on the prefix they return, measured decisions
    kept as they are; with sweeps enough, the whole window."""
    from circuitry.workers.acdc.guesses import guess
    gen = torch.Generator().manual_seed(9)
    for trial in range(100):
        B = int(torch.randint(1, 40, (1,), generator=gen))
        own = torch.randn(B, generator=gen, dtype=torch.float64)
        inter = torch.randn(B, B, generator=gen, dtype=torch.float64).tril(-1) * 0.5

        def predict(g, first=0):
            return (own if g is None else own + inter @ g.double())[first:]

        has_known = torch.rand(B, generator=gen) < 0.2
        known = torch.rand(B, generator=gen) < 0.5
        expected = torch.zeros(B, dtype=torch.bool)
        for k in range(B):
            expected[k] = known[k] if has_known[k] else bool(predict(expected)[k] < 0.0)
        for sweeps in (2, B + 1):
            g, agreed = guess(predict, 0.0, has_known, known, sweeps=sweeps)
            assert 1 <= agreed <= B and g.shape == (agreed,)
            assert torch.equal(g, expected[:agreed]), trial
        assert agreed == B


def test_measure_round_matches_the_sequential_reading():
    """A round's decisions read off in tensor ops equal the literal loop: increase of row k against
    the row of the last guessed removal before it, exact up to and including the first
    contradiction of a guess, the next round's guesses after it; and whether any guess was wrong."""
    from circuitry.workers.acdc.guesses import measure_round
    gen = torch.Generator().manual_seed(5)
    tau, contradicted = 0.05, 0
    for _ in range(200):
        B = int(torch.randint(1, 12, (1,), generator=gen))
        met = torch.rand(B, generator=gen, dtype=torch.float64) * 0.3
        g = torch.rand(B, generator=gen) < 0.5
        met_now = float(torch.rand(1, generator=gen, dtype=torch.float64)) * 0.3
        before, incs, removes, accepted = met_now, [], [], B
        for k in range(B):
            incs.append(float(met[k]) - before)
            removes.append(incs[-1] < tau)
            if removes[-1] != bool(g[k]) and accepted == B:
                accepted = k + 1
            if g[k]:
                before = float(met[k])
        inc, remove, acc, wrong = measure_round(met, g, met_now, tau)
        assert inc.tolist() == incs and remove.tolist() == removes and acc == accepted
        assert wrong == (removes != g.tolist())
        contradicted += accepted < B
    assert contradicted > 20  # both branches were exercised


def test_problem_to_device_keeps_results():
    """Device plumbing on the CPU: moving a problem is a no-op there, results come back on the CPU."""
    p = problem_for(random_checkpoint([4, 6, 5, 3], 2), "mse", "mean", None)
    assert p.to("cpu") is p and p.graph.to("cpu") is p.graph
    res = acdc(p.to(torch.device("cpu")), 1e-3)
    assert all(m.device.type == "cpu" for m in res.masks + res.scores)
    assert same_masks(res.masks, acdc_naive(p, 1e-3).masks)


def vanilla_checkpoint(task, width, steps):
    """A small dense net trained without any penalty (the networks ACDC is slowest on)."""
    from circuitry.workers.train import TrainConfig, train
    return train(TrainConfig(task=task, regime="vanilla", steps=steps, seed=0, width=width, device="cpu")).checkpoint


@pytest.fixture(scope="module")
def dense_nets():
    """Dense nets on their tasks' own examples: untrained (random, no zero weights) and
    vanilla-trained, one regression (MSE) and one classification (KL) each."""
    return {("mse", "untrained"): random_checkpoint([4, 8, 8, 2], 5, zero_fraction=0.0),
            ("kl", "untrained"): random_checkpoint([64, 6, 6, 10], 6, zero_fraction=0.0),
            ("mse", "vanilla"): vanilla_checkpoint("independence", 8, 150),
            ("kl", "vanilla"): vanilla_checkpoint("digits", 6, 60)}


@pytest.mark.parametrize("kind", ["mse", "kl"])
@pytest.mark.parametrize("net", ["untrained", "vanilla"])
def test_acdc_equals_naive_on_dense_nets(dense_nets, kind, net):
    """Every ablation and output=K on dense nets, with the examples a discovery would use (digits:
    real images, many pixels equal in a clean/corrupted pair)."""
    from circuitry.workers.discover import prepare
    ckpt = dense_nets[(kind, net)]
    for ablation in ("resample", "zero", "mean"):
        for output in (None, 1):
            if net == "untrained":
                p = problem_for(ckpt, kind, ablation, output, n=48)
            else:
                p = prepare(ckpt, ablation=ablation, output=output).problem
            assert not any(bool((w == 0).any()) for w in p.graph.weights)  # dense
            ex, _ = exact_scores(p)
            for q in (0.3, 0.7):
                tau = tau_between(ex, q)
                fast, naive = acdc(p, tau), acdc_naive(p, tau)
                assert same_masks(fast.masks, naive.masks), (ablation, output, q)
                for a, b in zip(fast.scores, naive.scores):
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
                kept = sum(int(m.sum()) for m in fast.masks)
                assert 0 < kept < p.graph.n_edges, (ablation, output, q)


def test_device_code_path_runs_on_cpu(monkeypatch):
    """What a GPU runs (its large tiles: every candidate row of a round in one tile) gives the
    naive circuit on the CPU too, so nothing GPU-only goes untested."""
    from circuitry.workers.acdc import downstream
    monkeypatch.setattr(downstream, "TILE_ELEMENTS", {})  # the CPU falls back to TILE_ELEMENTS_OTHER
    for kind in ("mse", "kl"):
        p = problem_for(random_checkpoint([5, 9, 7, 4], 12, zero_fraction=0.0), kind, "resample", None)
        ex, _ = exact_scores(p)
        tau = tau_between(ex, 0.5)
        fast, naive = acdc(p, tau), acdc_naive(p, tau)
        assert same_masks(fast.masks, naive.masks)
        torch.testing.assert_close(exact_scores(p)[0], exact_naive(p), rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: torch.cuda.is_available() is False "
                    "(test_device_code_path_runs_on_cpu covers the GPU tiles on the CPU)")
@pytest.mark.parametrize("kind,order", [("mse", "ascending"), ("kl", "ascending"), ("kl", "random")])
def test_acdc_on_the_gpu_equals_the_naive_definition_on_the_cpu(dense_nets, kind, order):
    """The same code on a GPU: a problem moved there gives the CPU naive circuit and scores, and
    its results come back on the CPU."""
    from circuitry.workers.discover import prepare
    p = prepare(dense_nets[(kind, "vanilla")], ablation="resample").problem
    ex, _ = exact_scores(p)
    gpu = p.to("cuda")
    torch.testing.assert_close(exact_scores(gpu)[0], ex, rtol=0, atol=1e-12)
    scores = torch.sort(ex[ex > 0]).values
    for q in (0.3, 0.7):
        k = int(q * len(scores))
        tau = float(scores[k - 1] + scores[k]) / 2  # between two scores: no rounding-level tie
        fast, naive = acdc(gpu, tau, order=order, seed=3), acdc_naive(p, tau, order=order, seed=3)
        assert all(m.device.type == "cpu" for m in fast.masks + fast.scores)
        assert same_masks(fast.masks, naive.masks), (kind, order, q)
        for a, b in zip(fast.scores, naive.scores):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,output", [("mse", None), ("kl", None), ("kl", 2), ("mse", 1)])
def test_acdc_equals_naive_with_exact_zero_deltas(kind, output):
    """Inputs equal in a clean/corrupted pair (blank pixels) give candidates whose delta is exactly 0
    on some examples only: those (candidate, example) pairs are not evaluated but copied from the
    state before (chain_terms); decisions and scores must still be the naive ones."""
    for seed, shape in ((0, [6, 7, 5, 4]), (1, [5, 6, 6, 5, 3])):
        ckpt = random_checkpoint(shape, 20 + seed, zero_fraction=0.0)
        g = torch.Generator().manual_seed(seed)
        x, xc = torch.randn(40, shape[0], generator=g), torch.randn(40, shape[0], generator=g)
        blank = torch.rand(40, shape[0], generator=g) < 0.5
        x[blank], xc[blank] = 0.0, 0.0
        p = Problem.build(Graph.from_checkpoint(ckpt), x, xc, kind, "resample", output)
        diff = p.ablated[0] - p.clean[0]
        assert 0 < int((diff == 0).sum()) < diff.numel()  # some pairs are zero, not whole candidates
        ex, _ = exact_scores(p)
        for q in (0.3, 0.7):
            tau = tau_between(ex, q)
            for budget in (1, 1 << 22):
                fast, naive = acdc(p, tau, batch_elements=budget), acdc_naive(p, tau)
                assert same_masks(fast.masks, naive.masks), (seed, q, budget)
                for a, b in zip(fast.scores, naive.scores):
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", ["ascending", "descending", "random"])
@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_acdc_equals_naive_in_every_sender_order(order, kind):
    """The fast ACDC visits senders in the asked order exactly as the literal definition does."""
    p = problem_for(random_checkpoint([4, 6, 5, 3], 11), kind, "resample", None)
    ex, _ = exact_scores(p)
    tau = tau_between(ex, 0.5)
    naive = acdc_naive(p, tau, order=order, seed=5)
    for budget in (1, 1 << 22):
        fast = acdc(p, tau, batch_elements=budget, order=order, seed=5)
        assert same_masks(fast.masks, naive.masks), (order, budget)
        for a, b in zip(fast.scores, naive.scores):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_sender_order_changes_the_circuit_and_random_follows_the_seed():
    """Order is a real choice: on a net where senders overlap, another order keeps other edges;
    `random` is a permutation per receiver fixed by the seed."""
    from circuitry.workers.acdc import sender_orders

    shape = [4, 6, 5, 3]
    a, b = sender_orders(shape, "random", 1), sender_orders(shape, "random", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], sender_orders(shape, "random", 2)[k]) for k in a)
    assert all(sorted(v.tolist()) == list(range(shape[k[0] - 1])) for k, v in a.items())
    assert sender_orders(shape, "descending")[3, 0].tolist() == [4, 3, 2, 1, 0]
    assert sender_orders(shape, "ascending") is None
    differs = False
    for seed in range(4):
        p = problem_for(random_checkpoint(shape, seed), "mse", "resample", None)
        ex, _ = exact_scores(p)
        tau = tau_between(ex, 0.6)
        up, down = acdc(p, tau), acdc(p, tau, order="descending")
        differs |= not same_masks(up.masks, down.masks)
    assert differs
    with pytest.raises(ValueError, match="order"):
        sender_orders(shape, "sideways")


def cross_entropy_checkpoint(width, steps):
    """A dense digits net trained as issue 13's were (full-batch AdamW, lr 2e-3, cross-entropy, no
    penalty): large logits and many edges near tau, the case where guesses are most often wrong."""
    from circuitry import tasks
    task = tasks.get_task("digits")
    data = task.generate(0)
    torch.manual_seed(0)
    model = CoordMLP([64, width, width, 10])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        task.loss(model(data.x_train), data.y_train).backward()
        opt.step()
    return model.to_checkpoint("digits", "vanilla", 0, {})


@pytest.mark.parametrize("output", [None, 3])
def test_acdc_equals_naive_on_cross_entropy_trained_dense_net(output):
    """Real digit images (blank pixels: zero-delta pairs), KL, taus from the exact scores' quantiles
    and the issue's 1e-3; CPU tiles and the GPU's (every row of a round in one tile)."""
    from circuitry.workers.acdc import downstream
    from circuitry.workers.discover import prepare
    p = prepare(cross_entropy_checkpoint(8, 300), ablation="resample", output=output).problem
    ex, _ = exact_scores(p)
    for tau in (tau_between(ex, 0.4), tau_between(ex, 0.8), 1e-3):
        naive = acdc_naive(p, tau)
        for tiles in (downstream.TILE_ELEMENTS, {}):
            cpu_tiles, downstream.TILE_ELEMENTS = downstream.TILE_ELEMENTS, tiles
            try:
                fast = acdc(p, tau)
            finally:
                downstream.TILE_ELEMENTS = cpu_tiles
            assert same_masks(fast.masks, naive.masks), (tau, tiles)
            for a, b in zip(fast.scores, naive.scores):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        kept = sum(int(m.sum()) for m in naive.masks)
        assert 0 < kept < p.graph.n_edges, tau


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_shifted_metric_terms_equal_the_plain_ones(kind):
    """Metric.per_example_shifted_t (ACDC's downstream form: outputs minus shift_t, <p, u> given or
    not) equals per_example_t, also where a logit moved so far that the shift over/underflows."""
    from circuitry.workers.graph import Metric
    g = torch.Generator().manual_seed(0)
    y_full = 3 * torch.randn(20, 5, generator=g, dtype=torch.float64)
    metric = Metric(kind, y_full)
    yt = (y_full + torch.randn(4, 20, 5, generator=g, dtype=torch.float64)).permute(2, 0, 1).contiguous()
    yt[1, 2, 3] += 900.0  # exp overflows at the full model's shift
    yt[:, 3, 7] -= 900.0  # every output of one example underflows
    plain = metric.per_example_t(yt.clone())
    ut = yt - metric.shift_t[:, None, :]
    torch.testing.assert_close(metric.per_example_shifted_t(ut), plain, rtol=1e-12, atol=1e-9)
    if kind == "kl":
        pu = (ut * metric.p_full_t[:, None, :]).sum(0)
        torch.testing.assert_close(metric.per_example_shifted_t(ut, pu=pu), plain, rtol=1e-12, atol=1e-9)
        # outputs in log2 units (ACDC folds log2(e) into the last layer's weights)
        torch.testing.assert_close(metric.per_example_shifted_t(ut / math.log(2), log2=True), plain,
                                   rtol=1e-12, atol=1e-9)
    assert torch.isfinite(plain).all() and float(plain[2, 3]) > 1.0  # the moved logit counts
    # only some outputs evaluated, the others' constant contribution added (Metric.rest_t)
    keep = torch.tensor([1, 3])
    rest = metric.rest_t(ut[:, 0], keep)
    p_t = metric.p_full_t[keep] if kind == "kl" else None
    for row in range(4):  # row 0's other outputs, row's kept ones (row 2 overflows, row 3 underflows)
        moved = ut[:, 0].clone()
        moved[keep] = ut[keep, row]
        want = metric.per_example_t(moved + metric.shift_t)
        got = metric.per_example_shifted_t(ut[keep, row], p_t=p_t, rest=rest)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)
    assert metric.rest_t(ut[:, 0], torch.arange(5)) is None


@pytest.mark.parametrize("kind,output", [("mse", None), ("kl", None), ("mse", 2), ("kl", 2), ("logit_diff", None)])
def test_metric_on_examples_gives_those_examples_terms(kind, output):
    """Metric.on_examples (per-example constants gathered lazily, when a formula first reads them):
    the terms of (example, value) pairs equal the full metric's terms of those examples, in every form."""
    from circuitry.workers.graph import Metric
    g = torch.Generator().manual_seed(1)
    y_full = 3 * torch.randn(20, 5, generator=g, dtype=torch.float64)
    metric = Metric(kind, y_full, output)
    yt = (y_full + torch.randn(20, 5, generator=g, dtype=torch.float64)).T.contiguous()
    idx = torch.tensor([7, 0, 7, 19, 3])  # repeats: ACDC's pairs name an example once per candidate
    sub = metric.on_examples(idx)
    torch.testing.assert_close(sub.per_example_t(yt[:, idx]), metric.per_example_t(yt)[idx], rtol=1e-12, atol=1e-14)
    if metric.shift_t is not None:
        ut = yt - metric.shift_t
        torch.testing.assert_close(sub.per_example_shifted_t(ut[:, idx]), metric.per_example_shifted_t(ut)[idx],
                                   rtol=1e-12, atol=1e-14)
    assert sub.kind == kind and "logp_full" not in vars(sub)  # no formula read it: never gathered


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_closed_form_derivatives_match_finite_differences(kind):
    """The guesses' model for receivers that feed the outputs (`Downstream.derivatives`) equals the
    central differences of the evaluated terms, for an output receiver and a last-hidden one, at
    the full model and at a moved state."""
    from circuitry.workers.acdc.downstream import Downstream, full_state
    p = problem_for(random_checkpoint([5, 7, 6, 4], 3, zero_fraction=0.2), kind, "resample", None, n=24)
    g, L = p.graph, p.graph.n_layers
    z, h = full_state(p)
    masks = g.full_masks()
    masks[L - 1][0, 2] = False  # a dead edge: the receiver moves fewer outputs
    for m in (L, L - 1):
        down = Downstream(p, masks, m, z, h, 1 << 20)
        assert down.closed_form
        for j in range(g.shape[m]):
            plan = down.plan(j)
            for shift in (0.0, 0.7):
                x = z[m][j] + shift
                d1, d2 = down.derivatives(j, x, plan)
                eps = 1e-4
                _, per = down.evaluate(j, torch.stack([x - eps, x, x + eps]), plan)
                n = p.n_examples
                torch.testing.assert_close(d1, (per[2] - per[0]) / (2 * eps * n), rtol=1e-5, atol=1e-9)
                torch.testing.assert_close(d2, (per[2] - 2 * per[1] + per[0]) / (eps * eps * n), rtol=1e-3, atol=1e-6)


def test_exact_output_predictions_equal_the_evaluated_increases():
    """An output receiver's predictor under KL (`ExactOutput`) is exact: its increases for a chain
    of guessed removals equal the ones the rows measure. (It only guesses, so a wrong formula would
    cost speed silently: this pins it.)"""
    from circuitry.workers.acdc.downstream import Downstream, full_state
    from circuitry.workers.acdc.guesses import measure_round
    p = problem_for(random_checkpoint([5, 7, 6, 4], 5), "kl", "resample", None, n=24)
    L = p.graph.n_layers
    z, h = full_state(p)
    down = Downstream(p, p.graph.full_masks(), L, z, h, 1 << 20)
    gen = torch.Generator().manual_seed(0)
    for j in range(p.graph.shape[L]):
        plan = down.plan(j)
        deltas = 3 * torch.randn(9, p.n_examples, generator=gen, dtype=torch.float64)
        g = torch.rand(9, generator=gen) < 0.5
        before = z[L][j] + torch.cumsum(torch.cat([torch.zeros(1, p.n_examples, dtype=torch.float64),
                                                      g[:-1, None] * deltas[:-1]]), 0)
        met, _ = down.evaluate(j, before + deltas, plan)
        now, _ = down.evaluate(j, z[L][j][None], plan)
        inc, *_ = measure_round(met, g, float(now[0]), tau=float("inf"))
        predicted = down.exact_output(j, plan)(z[L][j], deltas)(g)
        torch.testing.assert_close(predicted, inc, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind,ablation,output,unsure", [("kl", "resample", None, False), ("mse", "resample", None, False),
                                                          ("kl", "mean", 1, False), ("mse", "zero", 2, False),
                                                          ("kl", "resample", None, True),
                                                          ("logit_diff", "resample", None, False)])
def test_interpolated_receivers_give_the_naive_circuit(monkeypatch, kind, ablation, output, unsure):
    """Receivers decided on an interpolant of their terms (`Interpolant`, forced on every receiver
    whose rows pass a hidden layer): the naive circuit and scores, at taus across the scores; also
    when every candidate is 'unsure' (an infinite margin: each decided from its exact rows). Both
    kinds of fit run: on the states of a round that holds every candidate, and on every state the
    remaining candidates can reach (after a round leaves the first interval)."""
    from circuitry.workers.acdc import interpolant
    fits, kinds = [], set()
    real_fit = interpolant.Interpolant.fit

    def fit(down, j, plan, lo, hi, counts=interpolant.CHEB_NODES):
        interp, spent = real_fit(down, j, plan, lo, hi, counts)
        if unsure and interp is not None:
            interp.margin = float("inf")
        fits.append(interp)
        kinds.add("round" if counts == interpolant.CHEB_NODES else "reachable")
        return interp, spent

    monkeypatch.setattr(interpolant, "CHEB_MIN_CANDIDATES", 1)
    monkeypatch.setattr(interpolant.Interpolant, "fit", staticmethod(fit))
    for seed, shape in ((0, [6, 7, 5, 4]), (1, [5, 6, 6, 5, 3])):
        p = problem_for(random_checkpoint(shape, 40 + seed), kind, ablation, output, n=40, seed=seed)
        ex, _ = exact_scores(p)
        for q in (0.2, 0.5, 0.8):
            tau = tau_between(ex, q)
            fast, naive = acdc(p, tau), acdc_naive(p, tau)
            assert same_masks(fast.masks, naive.masks), (seed, q)
            for a, b in zip(fast.scores, naive.scores):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert fits and all(f is not None for f in fits)  # every forced receiver was interpolated
    assert kinds == {"round", "reachable"}


def test_interpolated_exact_scores_equal_the_naive_ones_in_any_chunking(monkeypatch):
    """`exact_scores` on interpolated receivers (forced): within 1e-12 of the one-forward-per-edge
    scores, and the same bits whichever slices of the edge list are asked for."""
    from circuitry.workers.acdc import interpolant
    monkeypatch.setattr(interpolant, "CHEB_MIN_CANDIDATES", 1)
    for kind, output in (("kl", None), ("mse", 1)):
        p = problem_for(random_checkpoint([6, 7, 5, 4], 9), kind, "resample", output, n=40)
        whole, _ = exact_scores(p)
        torch.testing.assert_close(whole, exact_naive(p), rtol=0, atol=1e-12)
        E = p.graph.n_edges
        parts = torch.cat([exact_scores(p, a, min(E, a + 11))[0] for a in range(0, E, 11)])
        assert torch.equal(parts, whole)


def test_receivers_whose_interpolant_fails_run_on_exact_rows(monkeypatch):
    """No interpolant reaches the tolerance (forced: tolerance 0) or examples whose deltas are all
    zero (blank pixels: a zero-width interval): the circuit is still the naive one."""
    from circuitry.workers.acdc import interpolant
    monkeypatch.setattr(interpolant, "CHEB_MIN_CANDIDATES", 1)
    ckpt = random_checkpoint([6, 7, 5, 4], 21, zero_fraction=0.0)
    g = torch.Generator().manual_seed(3)
    x, xc = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    x[:10], xc[:10] = 0.0, 0.0  # ten examples whose first-layer deltas are all zero
    p = Problem.build(Graph.from_checkpoint(ckpt), x, xc, "kl", "resample", None)
    ex, _ = exact_scores(p)
    tau = tau_between(ex, 0.5)
    naive = acdc_naive(p, tau)
    for tolerance in (interpolant.CHEB_TOLERANCE, 0.0):
        monkeypatch.setattr(interpolant, "CHEB_TOLERANCE", tolerance)
        fast = acdc(p, tau)
        assert same_masks(fast.masks, naive.masks), tolerance
        for a, b in zip(fast.scores, naive.scores):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_scorers_hand_back_ordinary_tensors_and_leave_the_problem_usable_with_autograd():
    """The scorers run under torch.inference_mode (`without_autograd`), but what they return is
    ordinary: a caller can edit a mask in place and take gradients through the scores, and the
    problem still serves an autograd method afterwards (EAP's scores are the same as before)."""
    from circuitry.workers.attribution import attribution_scores
    p = problem_for(random_checkpoint([5, 7, 6, 3], 4), "kl", "resample", None)
    eap_before = attribution_scores(p, "eap")
    ex, _ = exact_scores(p)
    res = acdc(p, tau_between(ex, 0.5))
    for t in (*res.masks, *res.scores, ex, exact_naive(p), *acdc_naive(p, 1e-3, max_edges=5).masks):
        assert not t.is_inference()
    res.masks[0][0, 0] = not bool(res.masks[0][0, 0])  # an in-place edit outside the mode
    w = ex.clone().requires_grad_()
    (w * ex).sum().backward()
    torch.testing.assert_close(w.grad, ex)
    for a, b in zip(attribution_scores(p, "eap")[0], eap_before[0]):
        assert torch.equal(a, b)


def test_logit_diff_metric_is_the_normalised_drop_of_the_predicted_class_margin():
    """logit_diff's term, by hand: (d_full - d) / mean|d_full|, d = logit of the full model's
    predicted class minus the mean of the other logits; 0 at the full model, 1 where every
    margin is gone."""
    from circuitry.workers.graph import Metric
    y_full = torch.tensor([[3.0, 1.0, -1.0], [0.0, 2.0, 4.0]], dtype=torch.float64)
    m = Metric("logit_diff", y_full)
    d_full = torch.tensor([3.0 - 0.0, 4.0 - 1.0], dtype=torch.float64)  # classes 0 and 2
    assert float(m(y_full)) == 0.0
    y = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    expected = (d_full - torch.tensor([0.0, 1.0 - 1.0], dtype=torch.float64)) / 3.0
    torch.testing.assert_close(m.per_example(y), expected)
    torch.testing.assert_close(m.per_example_t(y.T.contiguous()), expected)
    with pytest.raises(ValueError, match="drop the output"):
        Metric("logit_diff", y_full, 1)


def test_logit_diff_exact_scores_equal_the_naive_ones():
    p = problem_for(random_checkpoint([4, 6, 5, 3], 3), "logit_diff", "resample", None)
    fast, _ = exact_scores(p)
    naive = exact_naive(p)
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-12)
    assert bool((fast != 0).any())
