"""`circuitry schema`: the spec's JSON Schema (from the pydantic models in orchestrator.spec) accepts
every shipped example, rejects what the spec rejects, and names every table and field with its
type, default and allowed values."""
import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from circuitry.orchestrator import spec
from circuitry.orchestrator.cli import main
from circuitry.workers import names

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
GOOD = """
[sweep]
name = "s"
[train]
task = "independence"
regime = ["vanilla", "bimt", "prune"]
steps = 60
lam = [0, 1e-3]
[discover]
method = "acdc"
threshold = 0.01
order = "random"
"""


@pytest.fixture(scope="module")
def schema():
    out = spec.spec_schema()
    jsonschema.Draft202012Validator.check_schema(out)
    return out


def validator(schema):
    return jsonschema.Draft202012Validator(schema)


def test_cli_prints_the_schema(capsys, schema):
    main(["schema"])
    assert json.loads(capsys.readouterr().out) == schema


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path, schema):
    assert EXAMPLES, "no example specs found"
    validator(schema).validate(tomllib.loads(path.read_text()))
    spec.parse_spec(path.read_text())  # and the spec agrees


@pytest.mark.parametrize("old,new,field", [
    ('regime = ["vanilla", "bimt", "prune"]', 'regime = ["vanilla", "bimtt"]', "train.regime[1]"),
    ("steps = 60", "steps = 0", "train.steps"),
    ("steps = 60", "steps = 9223372036854775808", "train.steps"),
    ("steps = 60", "steps = [60, 60]", "train.steps[1]"),
    ("steps = 60", "steps = []", "train.steps"),
    ("lam = [0, 1e-3]", "lam = -1", "train.lam"),
    ("lam = [0, 1e-3]", "lam = 1e-3\nwidth = 5000", "train.width[0]"),
    ('order = "random"', 'order = "sideways"', "discover.order"),
    ("threshold = 0.01", "target_f = 1.5", "discover.target_f"),
    ('name = "s"', 'name = "no spaces"', "sweep.name"),
    ('name = "s"', 'name = "s"\nmetrics_port = 70000', "sweep.metrics_port"),
    ('name = "s"', 'name = "s"\npictures = "yes"', "sweep.pictures"),
    ('name = "s"', 'name = "s"\ntracking_uri = "nowhere"', "sweep.tracking_uri"),
    ('name = "s"', 'name = "s"\ncolour = 1', "sweep.colour"),
    ("[discover]", "[prune]\nmatch_fraction = 1\n[discover]", "prune.match_fraction"),
    ("[discover]", "[resources]\nmax_retries = -1\n[discover]", "resources.max_retries"),
    ("[discover]", "[testing]\ncrash_once = [\"\"]\n[discover]", "testing.crash_once[0]"),
    ("[discover]", "[discovr]", "discovr"),
    ('[sweep]\nname = "s"', "", "sweep"),
])
def test_what_the_spec_rejects_the_schema_rejects(old, new, field, schema):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    with pytest.raises(spec.SpecError) as e:
        spec.parse_spec(text)
    assert str(e.value).startswith(f"{field}:")
    assert not validator(schema).is_valid(tomllib.loads(text)), text


def test_the_good_spec_is_valid_both_ways(schema):
    validator(schema).validate(tomllib.loads(GOOD))
    regimes = [j.settings["regime"] for j in spec.parse_spec(GOOD).train_jobs()]
    assert sorted(regimes) == ["bimt", "bimt", "prune", "prune", "vanilla", "vanilla"]  # one of each per lam


def test_every_table_and_field_is_described(schema):
    defs, top = schema["$defs"], schema["properties"]
    assert list(top) == list(spec.TABLES) and schema["required"] == ["sweep", "train"]
    tables = {"sweep": spec.SWEEP_FIELDS, "train": spec.TRAIN_GRID, "discover": spec.DISCOVER_GRID,
              "resources": spec.RESOURCE_FIELDS, "prune": spec.PRUNE_FIELDS, "testing": spec.TESTING_FIELDS}
    for table, fields in tables.items():
        model = defs[table.capitalize()]
        assert model["additionalProperties"] is False
        assert list(model["properties"]) == list(fields), table
        assert sorted(model.get("required", [])) == sorted(k for k, (_, d) in fields.items() if d is spec.REQUIRED)
        for key, (_, default) in fields.items():
            prop = model["properties"][key]
            if default is None:  # unset: the schema says what that means instead of a null
                assert "default" not in prop and "Unset:" in prop["description"], (table, key)
            elif default is not spec.REQUIRED:
                assert prop["default"] == default, (table, key)
    train, discover = defs["Train"]["properties"], defs["Discover"]["properties"]
    assert train["regime"]["anyOf"][0]["enum"] == list(names.REGIMES)
    assert train["regime"]["anyOf"][1] == {"type": "array", "items": train["regime"]["anyOf"][0], "minItems": 1,
                                           "uniqueItems": True}
    assert train["task"]["anyOf"][0]["enum"] == list(spec.TASKS)
    assert train["steps"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
    assert train["width"]["anyOf"][0]["maximum"] == 4096
    assert discover["method"]["anyOf"][0]["enum"] == list(names.METHODS)
    assert discover["order"]["anyOf"][0]["enum"] == list(names.ORDERS)
    assert discover["order"]["default"] == names.DEFAULT_ORDER
    assert discover["ablation"]["anyOf"][0]["enum"] == list(names.ABLATIONS)
    assert discover["target_f"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    assert defs["Prune"]["properties"]["match_fraction"]["default"] == names.DEFAULT_MATCH_FRACTION
    assert defs["Sweep"]["properties"]["metrics_port"] == {**defs["Sweep"]["properties"]["metrics_port"],
                                                           "type": "integer", "minimum": -1, "maximum": 65535}
