"""Circuits at a target faithfulness: the search's bracket (workers.target) on hand-made f curves,
and the acceptance check on a digits model through the CLI: the circuit at tau_found is the one
--threshold tau_found gives, tau_above falls short, the bracket is within 1.2."""
import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from circuitry.workers.target import Probe, search_top_k, search_tau

torch.set_num_threads(1)


def curve(f_of_tau):
    """A probe from a hand-made f(tau); edges shrink with tau (they are only recorded)."""
    return lambda tau: Probe(f_of_tau(tau), int(1000 / (1 + 1e4 * tau)), result=("circuit at", tau))


def check_bracket(s, f_of_tau, target):
    assert s.reached and 0 < s.found < s.above and s.above / s.found <= 1.2
    assert f_of_tau(s.found) >= target > f_of_tau(s.above)
    assert s.result == ("circuit at", s.found)  # the circuit kept is the one at tau_found
    taus = [t["tau"] for t in s.tried]
    assert s.found in taus and s.above in taus and len(taus) == len(set(taus))  # every probe once, recorded
    assert all(t["f"] == f_of_tau(t["tau"]) for t in s.tried)


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 10.0])
@pytest.mark.parametrize("crossing", [1e-9, 3e-6, 0.5])
def test_bracket_of_a_decreasing_curve_from_any_scale(scale, crossing):
    """f falls through the target at `crossing`, far from where the search starts (the metric's
    scale) in either direction: the bracket holds the crossing within a factor 1.2."""
    f = lambda tau: 1.0 / (1.0 + tau / crossing)  # noqa: E731 - f = 0.5 at the crossing
    s = search_tau(curve(f), 0.9, scale, n_edges=1000)
    check_bracket(s, f, 0.9)
    assert s.found <= crossing / 9 < s.above  # f(tau) = 0.9 at tau = crossing / 9


def test_a_non_monotone_curve_gives_a_local_bracket():
    """f dips below the target at one tau and comes back above it: the bracket is a crossing (a
    local answer), with f(tau_found) >= target > f(tau_above) still true."""
    f = lambda tau: 0.5 if 1e-4 < tau < 2e-4 else (1.0 if tau < 1e-2 else 0.0)  # noqa: E731
    s = search_tau(curve(f), 0.95, 1.0, n_edges=100)
    check_bracket(s, f, 0.95)


def test_the_best_circuit_tried_is_kept_when_the_bisection_ends_on_a_denser_one():
    """Edges are not monotone in tau (ACDC's greedy path changes with tau): the bracketing probe
    at the start tau (0.01 here) keeps 10 edges and reaches the target, every tau the bisection
    tries keeps 40. The search still brackets the crossing at 0.05, and returns the 10-edge
    circuit, not the bisection's last lower end."""
    f = lambda tau: 1.0 if tau < 0.05 else 0.0  # noqa: E731
    edges = lambda tau: 10 if tau < 0.02 else 40  # noqa: E731
    s = search_tau(lambda tau: Probe(f(tau), edges(tau), result=("circuit at", tau)), 0.9, 1.0, n_edges=100)
    start = s.tried[0]["tau"]
    assert start == pytest.approx(0.01)  # scale * (1 - target) / sqrt(E)
    meeting = [t["tau"] for t in s.tried if t["f"] >= 0.9]
    last_lo = max(meeting)
    assert last_lo > 0.01 and s.above / last_lo <= 1.2 and f(s.above) < 0.9  # the bracket as before
    assert edges(last_lo) == 40  # where the old search stopped: a denser circuit
    assert (s.found, s.reached, s.result) == (start, True, ("circuit at", start))
    assert s.above > last_lo  # tau_above stays the bracket's upper end


def test_where_nothing_reaches_the_target_the_most_faithful_circuit_is_kept():
    """f stays below the target everywhere; the circuit at the start tau (0.05) is the most
    faithful (0.85), better than tau = 0's (0.8): that one is returned, `reached` False."""
    f = lambda tau: 0.85 if 0.01 < tau < 0.1 else 0.8  # noqa: E731
    s = search_tau(curve(f), 0.95, 1.0, n_edges=1)
    start = s.tried[0]["tau"]
    assert start == pytest.approx(0.05) and s.tried[-1]["tau"] == 0.0  # tau = 0 was tried, last
    assert (s.found, s.reached, s.result) == (start, False, ("circuit at", start))


def test_unreachable_target_falls_back_to_tau_zero():
    """Nothing positive reaches the target: tau = 0 is tried and kept; `reached` says whether it
    does. NaN f (undefined) never counts as reaching it."""
    s = search_tau(curve(lambda tau: 0.97 if tau == 0 else 0.2), 0.95, 1.0)
    assert (s.found, s.reached) == (0.0, True) and s.above > 0 and s.tried[-1]["tau"] == 0.0
    s = search_tau(curve(lambda tau: math.nan), 0.95, 1.0)
    assert (s.found, s.reached) == (0.0, False)
    # a dead net (f undefined for every circuit, known before any run): tau = 0 alone, one ACDC run
    s = search_tau(curve(lambda tau: math.nan), 0.95, 1.0, defined=False)
    assert (s.found, s.above, s.reached, [t["tau"] for t in s.tried]) == (0.0, None, False, [0.0])


def test_top_k_is_the_smallest_k_reaching_the_target():
    f = lambda k: min(1.0, k / 700)  # noqa: E731 - 0.95 first at k = 665
    s = search_top_k(lambda k: Probe(f(k), k, result=k), 0.95, 1000)
    assert (s.found, s.above, s.reached, s.result) == (665, 664, True, 665)
    assert {t["k"] for t in s.tried} >= {0, 1000, 664, 665}


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="target"):
        search_tau(curve(lambda t: 1.0), 1.5, 1.0)
    with pytest.raises(ValueError, match="target"):
        search_top_k(lambda k: Probe(1.0, k), 0.0, 10)


# ---------------------------------------------------------------- acceptance on a digits model

@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A dense digits model: vanilla, width 16, 200 steps (a few seconds; the data do not depend on
    the width). Dense nets are where errors add up over many removed edges."""
    from circuitry.orchestrator.cli import main

    out = tmp_path_factory.mktemp("digits")
    main(["train", "--task", "digits", "--regime", "vanilla", "--steps", "200", "--seed", "0", "--width", "16",
          "--out", str(out)])
    return out / "model.pt"


def run_discover(model, out, *args):
    from circuitry.orchestrator.cli import main

    main(["discover", "--model", str(model), "--method", "acdc", *args, "--out", str(out)])
    return json.loads((out / "summary.json").read_text()), pq.read_table(out / "circuit.parquet")


def test_acceptance_acdc_at_target_faithfulness(digits_model, tmp_path, capsys):
    s, circuit = run_discover(digits_model, tmp_path / "target", "--target-f", "0.95")
    assert s["target_f"] == 0.95 and s["target_reached"] is True
    assert s["faithfulness"] >= 0.95
    assert s["tau_found"] < s["tau_above"] <= 1.2 * s["tau_found"]
    assert s["threshold"] == s["tau_found"] and circuit.schema.metadata[b"target_f"] == b"0.95"
    assert 0 < s["n_edges_kept"] < s["n_edges_total"] and math.isfinite(s["evaluation"]["faithfulness"])
    # every probe is recorded; the two ends of the bracket are among them with their f and edges
    probes = {p["tau"]: p for p in s["search"]}
    assert probes[s["tau_found"]]["f"] == s["faithfulness"] and probes[s["tau_found"]]["edges"] == s["n_edges_kept"]
    assert probes[s["tau_above"]]["f"] < 0.95
    assert f"tau_found {s['tau_found']!r}" in capsys.readouterr().out  # printed at full precision

    # tau_found as --threshold: the identical circuit
    at_found, circuit_found = run_discover(digits_model, tmp_path / "found", "--threshold", repr(s["tau_found"]))
    assert circuit_found.column("in_circuit").equals(circuit.column("in_circuit"))
    assert circuit_found.column("score").equals(circuit.column("score"))
    assert at_found["faithfulness"] == s["faithfulness"] and at_found["target_f"] is None
    assert at_found["tau_found"] is None and at_found["search"] is None
    # tau_above as --threshold: short of the target
    at_above, _ = run_discover(digits_model, tmp_path / "above", "--threshold", repr(s["tau_above"]))
    assert at_above["faithfulness"] < 0.95 and at_above["faithfulness"] == probes[s["tau_above"]]["f"]
    # the search's cost is counted whole
    assert s["edges_tested"] > at_found["edges_tested"]


def test_score_method_at_target_is_the_smallest_top_k(digits_model):
    from circuitry.workers.discover import discover
    from circuitry.workers.model import load_checkpoint

    ckpt = load_checkpoint(digits_model)
    d = discover(ckpt, "eap", target_f=0.9, device="cpu")
    s = d.summary
    k = s["top_k"]
    assert s["n_edges_kept"] == k and s["faithfulness"] >= 0.9 and s["target_reached"]
    assert s["tau_found"] is None and s["tau_above"] is None
    below = [p for p in s["search"] if p["k"] == k - 1]
    assert below and below[0]["f"] < 0.9  # k - 1 edges fall short: the smallest k of its bracket
    same = discover(ckpt, "eap", top_k=k, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(same.masks, d.masks))


def test_a_dead_net_runs_acdc_once():
    """A net whose outputs ignore its inputs (every circuit's f undefined) gets the tau = 0 circuit
    from one ACDC run, not a walk down ten decades of tau."""
    from circuitry.workers.discover import discover
    from circuitry.workers.model import CoordMLP

    ckpt = CoordMLP([2, 8, 8, 2]).to_checkpoint("two_moons", "vanilla", 0, {})
    ckpt["weights"][-1].zero_()
    d = discover(ckpt, "acdc", target_f=0.95)
    assert d.summary["target_reached"] is False and d.summary["tau_found"] == 0.0
    assert [t["tau"] for t in d.summary["search"]] == [0.0] and d.summary["tau_above"] is None
