"""One source for the words and defaults (workers.names): the CLI, the spec and the workers accept
the same regimes, methods, ablations and orders, because they hold the same tuple."""
from pathlib import Path

import pytest
import torch

from circuitry.orchestrator import cli_discover, jobs, report_tables, spec, spec_tables
from circuitry.orchestrator.cli import cli
from circuitry.workers import acdc, attribution, discover_config, graph, names, prune, train
from circuitry.workers.device import DeviceError, pick_device

ROOT = Path(__file__).resolve().parents[1]


def _choices(command, option):
    return next(p for p in command.params if p.name == option).type.choices


def test_cli_spec_and_workers_share_one_tuple():
    assert tuple(_choices(cli.commands["train"], "regime")) == names.REGIMES
    assert tuple(_choices(cli_discover.discover_cmd, "method")) == names.METHODS
    assert tuple(_choices(cli_discover.discover_cmd, "order")) == names.ORDERS
    assert tuple(_choices(cli_discover.discover_cmd, "ablation")) == names.ABLATIONS
    assert spec_tables.REGIMES is names.REGIMES and spec_tables.METHODS is names.METHODS
    assert spec_tables.ORDERS is names.ORDERS and spec_tables.ABLATIONS is names.ABLATIONS
    assert discover_config.METHODS is names.METHODS and discover_config.ORDERS is names.ORDERS
    assert graph.ABLATIONS is names.ABLATIONS and acdc.ORDERS is names.ORDERS
    assert attribution.ATTRIBUTION_METHODS is names.ATTRIBUTION_METHODS
    assert report_tables.REGIME_ORDER is names.REGIMES and report_tables.BASELINE == names.BASELINE_REGIME
    assert train.TRAINED_REGIMES is names.TRAINED_REGIMES
    assert prune.DEFAULT_MATCH_FRACTION == names.DEFAULT_MATCH_FRACTION
    assert names.REGIMES == (*names.TRAINED_REGIMES, "prune")
    assert set(names.SCORE_METHODS) | {"acdc"} == set(names.METHODS)


def test_errors_list_the_shared_words():
    with pytest.raises(spec.SpecError, match=", ".join(names.REGIMES)):
        spec.parse_spec('[sweep]\nname = "t"\n[train]\ntask = "independence"\nregime = "bimtt"\nsteps = 2\n')
    with pytest.raises(ValueError, match=", ".join(names.TRAINED_REGIMES)):
        train.TrainConfig("independence", "prune", 2).resolved()
    with pytest.raises(ValueError, match=", ".join(names.ORDERS)):
        acdc.sender_orders([2, 3, 1], "sideways")


def test_no_module_keeps_its_own_copy_of_a_word_list():
    lists = [names.REGIMES, tuple(names.TRAINED_REGIMES), names.METHODS, names.SCORE_METHODS, names.ABLATIONS,
             names.ORDERS]
    sources = [p for d in ("orchestrator", "workers", "tasks", "benchmarks", "examples") for p in (ROOT / d).rglob("*.py")
               if p.name != "names.py"]
    for words in lists:
        for quote in ('"', "'"):
            literal = ", ".join(f"{quote}{w}{quote}" for w in words)
            copies = [str(p.relative_to(ROOT)) for p in sources if literal in p.read_text()]
            assert not copies, f"{words} is copied in {copies}; import it from circuitry.workers.names"


def test_spec_edge_count_is_the_trained_networks():
    settings = {"task": "independence", "width": 3}
    result = train.train(train.TrainConfig("independence", "vanilla", 1, width=3, log_every=1, device="cpu"))
    weights = result.checkpoint["weights"]
    assert jobs.model_shape(settings) == list(result.checkpoint["shape"]) == [4, 3, 3, 2]
    assert jobs.model_edges(settings) == sum(w.numel() for w in weights) == 4 * 3 + 3 * 3 + 3 * 2
    assert jobs.model_shape({"task": "independence"}) == list(train.get_task("independence").shape)


def test_one_device_function():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'tpu-9': use auto, cpu or cuda"):
        pick_device("tpu-9")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="torch sees no GPU"):
            pick_device("cuda:0")
