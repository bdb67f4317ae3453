"""tracr's compiled programs in circuitry's Transformer (tasks.tracr, scripts/compile_tracr.py)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from circuitry.tasks import get_task
from circuitry.tasks.tracr import compiled_checkpoint
from circuitry.workers.train import TrainConfig, train
from circuitry.workers.transformer import Transformer

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compile_tracr.py"


def compile_script():
    spec = importlib.util.spec_from_file_location("compile_tracr", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("program", ["reverse", "frac_prevs"])
def test_shipped_weights_reproduce_tracrs_outputs(program):
    ckpt = compiled_checkpoint(program)
    model = Transformer.from_checkpoint(ckpt).eval()
    ex = ckpt["examples"]
    with torch.no_grad():
        out = model(ex["tokens"])
    assert torch.allclose(out, ex["expected"], atol=1e-5)
    if program == "reverse":  # the decoded outputs are the inputs reversed
        values = ["1", "2", "3"]
        decoded = [[values[i] for i in row] for row in out[:, 1:].argmax(-1).tolist()]
        assert decoded == ex["decoded"]
        inputs = [[ckpt["tokens"][t] for t in row[1:]] for row in ex["tokens"].tolist()]
        assert decoded == [row[::-1] for row in inputs]
    else:  # fraction of "x" so far
        is_x = (ex["tokens"][:, 1:] == ckpt["tokens"].index("x")).float()
        frac = is_x.cumsum(1) / torch.arange(1, is_x.shape[1] + 1)
        assert torch.allclose(out[:, 1:, 0], frac, atol=1e-5)


def test_ground_truth_is_the_weights_composition():
    truth = get_task("tracr_frac_prevs").truth
    # is_x by an MLP from the token; the head averages it (value) over positions chosen by BOS logic
    assert truth.edges == {("input", "m0"), ("input", "a1.h0<q>"), ("input", "a1.h0<k>"), ("m0", "a1.h0<v>"),
                           ("a1.h0", "logits")}
    reverse = get_task("tracr_reverse").truth
    assert reverse.nodes == {"input", "a0.h0", "m0", "m1", "m2", "a3.h0", "logits"}
    assert ("m2", "a3.h0<q>") in reverse.edges and ("a3.h0", "logits") in reverse.edges
    module = compile_script()  # the same computation from the shipped weights
    ckpt = compiled_checkpoint("reverse")
    nodes, edges = module.ground_truth(ckpt["weights"], Transformer.from_checkpoint(ckpt).cfg)
    assert set(nodes) == reverse.nodes and {tuple(e) for e in edges} == reverse.edges


def test_training_a_compiled_task_returns_its_weights():
    result = train(TrainConfig(task="tracr_reverse", regime="vanilla", steps=1))
    assert result.checkpoint["format"] == "circuitry.transformer/1"
    for k, v in compiled_checkpoint("reverse")["weights"].items():
        assert torch.equal(result.checkpoint["weights"][k], v)
    assert result.metrics["test_accuracy"] == 1.0
    with pytest.raises(ValueError, match="compiled, not trained"):
        train(TrainConfig(task="tracr_reverse", regime="bimt", steps=1))


def test_fresh_compilation_matches_tracr():
    pytest.importorskip("tracr", reason="tracr-pypi is not installed (pip install circuitry[tracr]); the "
                                        "shipped-weights test above still checks the stored outputs")
    module = compile_script()
    for program in module.PROGRAMS:
        ckpt = module.compile_one(program)
        model = Transformer.from_checkpoint(ckpt).eval()
        with torch.no_grad():
            out = model(ckpt["examples"]["tokens"])
        assert torch.allclose(out, ckpt["examples"]["expected"], atol=1e-5), program
        shipped = compiled_checkpoint(program)
        for k, v in shipped["weights"].items():
            assert torch.equal(ckpt["weights"][k], v), (program, k)
