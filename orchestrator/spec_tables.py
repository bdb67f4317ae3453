"""The spec's tables as pydantic models (Sweep, Train, Discover, Resources, Prune, Testing, SpecFile):
each field's type, allowed values, default and meaning, written once. They give the JSON Schema
(`circuitry schema`, for editors) and the defaults that orchestrator.spec fills in; the checkers
(orchestrator.checkers, attached to each type as `Checked`) validate and word the one-line errors.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from circuitry.orchestrator import checkers
from circuitry.tasks import TASKS
from circuitry.workers.names import (ABLATIONS, CIRCUIT_METRICS, DEFAULT_ABLATION, DEFAULT_CHECKPOINT_EVERY, DEFAULT_LOG_EVERY, DEFAULT_MATCH_FRACTION, DEFAULT_ORDER,
                                     METHODS, ORDERS, REGIMES)


# The models declare every table and field once: its type, allowed values, default and meaning.
# They give the JSON Schema (`circuitry schema`, for editors) and the defaults; the checkers (orchestrator.checkers)
# (attached to each type as `Checked`) validate and word the one-line errors. Pydantic does not
# validate here: its errors for a grid field (a value or a list) report both branches of the union
# in its own words over several lines, so keeping this file's one-line texts would take a
# translation layer as long as the checkers (tests/test_schema.py checks that both reject alike).


class Checked:
    """Annotated metadata: the checker of a field's values (it words the one-line error)."""

    def __init__(self, check):
        self.check = check


def _whole(pattern: str) -> str:
    """A pattern the JSON Schema way (a search): anchored, to match the whole string as re.fullmatch does."""
    return f"^(?:{pattern})$"


INT64_MAX = checkers.INT64[1]
PositiveInt = Annotated[int, Field(ge=1, le=INT64_MAX), Checked(checkers.positive_int)]
NonNegInt = Annotated[int, Field(ge=0, le=INT64_MAX), Checked(checkers.nonneg_int)]
NonNegFloat = Annotated[float, Field(ge=0), Checked(checkers.nonneg_float)]
PositiveFloat = Annotated[float, Field(gt=0), Checked(checkers.positive_float)]
OpenFraction = Annotated[float, Field(gt=0, lt=1), Checked(checkers.open_fraction)]
Faithfulness = Annotated[float, Field(gt=0, le=1), Checked(checkers.faithfulness)]
Port = Annotated[int, Field(ge=-1, le=65535), Checked(checkers.port)]
Name = Annotated[str, Field(pattern=_whole(checkers.NAME)), Checked(checkers.name)]
String = Annotated[str, Checked(checkers.string)]
TrackingUri = Annotated[str, Field(pattern=_whole(f"|{checkers.TRACKING_URI}")), Checked(checkers.tracking_uri)]
Host = Annotated[str, Field(pattern=_whole(checkers.HOST)), Checked(checkers.host)]
Pushgateway = Annotated[str, Field(pattern=_whole(f"|{checkers.PUSHGATEWAY}")), Checked(checkers.pushgateway)]
Bool = Annotated[bool, Checked(checkers.boolean)]
Selector = Annotated[str, Field(min_length=1), Checked(checkers.selector)]


def Choice(options: tuple[str, ...]):  # noqa: N802 - a type
    return Annotated[Literal[options], Checked(checkers.choice(options))]


def Grid(element):  # noqa: N802 - a type
    """A grid field: a value or a non-empty list of distinct values (a table's lists multiply)."""
    check = next(m for m in element.__metadata__ if isinstance(m, Checked))
    values = Annotated[list[element], Field(min_length=1, json_schema_extra={"uniqueItems": True})]
    return Annotated[Union[element, values], check]


def _unset(meaning: str):
    """An optional field's default: unset (TOML has no null), so the schema says what unset means."""
    def describe(schema: dict) -> None:
        del schema["default"]
        schema["description"] = f"{schema.get('description', '')} Unset: {meaning}.".strip()
    return Field(None, json_schema_extra=describe)


class Table(BaseModel):
    """A spec table: no fields but its own; attribute docstrings are the fields' descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Sweep(Table):
    """Where the sweep lives and how it is watched."""

    name: Name
    """The sweep's folder name under root (letters, digits, '.', '-', '_')."""
    root: String = "sweeps"
    """The folder the sweep folder goes under; relative = to the driver's working directory (only the
    driver writes it; workers need no access to it)."""
    tracking_uri: TrackingUri = ""
    """MLflow tracking URI: "" = an SQLite store in the sweep folder, http://HOST:PORT, sqlite:///FILE."""
    metrics_port: Port = 9464
    """Prometheus endpoint port: 0 = any free port, -1 = no endpoint."""
    metrics_host: Host = "127.0.0.1"
    """The address the endpoint binds: 127.0.0.1, or 0.0.0.0 so a cluster's Prometheus can reach it."""
    # at least 2 scrape intervals of deploy/prometheus/prometheus.yml (5 s)
    metrics_linger: NonNegFloat = 10.0
    """Seconds the endpoint stays up after the last job, so that a scraper sees the final counts."""
    pushgateway: Pushgateway = ""
    """Also push the final figures to this Pushgateway ("" = no push), e.g. http://HOST:9091."""
    # ~0.1-0.2 s a job, far more than a tiny model's training; not part of job ids (the report draws
    # its figures from model.pt)
    pictures: Bool = True
    """Draw network.png / circuit.png in every job folder."""
    max_jobs: PositiveInt = 100_000
    """The most jobs the grids may expand to: a bigger spec is refused before any job is built
    (orchestrator.count), so a typo in a grid cannot eat the driver's memory."""


class Train(Table):
    """A training grid: every field is a value or a list of values, and the lists multiply."""

    task: Grid(Choice(tuple(TASKS)))
    regime: Grid(Choice(REGIMES))
    """prune: the vanilla model of the same task, seed and steps, pruned to the weight count of the
    bimt model of the same point (the spec must have both) and fine-tuned ([prune])."""
    seed: Grid(NonNegInt) = 0
    steps: Grid(PositiveInt)
    lam: Grid(NonNegFloat) = _unset("the task's BIMT recipe (tasks.recipe)")
    lr: Grid(PositiveFloat) = _unset("the task's BIMT recipe")
    width: Grid(Annotated[int, Field(ge=1, le=4096), Checked(checkers.positive_int)]) = _unset("the task's hidden widths")
    swap_every: Grid(PositiveInt) = _unset("the task's BIMT recipe")
    top_k: Grid(NonNegInt) = _unset("the task's BIMT recipe")
    """Neurons relocated per layer per swap round."""
    final_factor: Grid(NonNegFloat) = _unset("the task's BIMT recipe")
    """The lam multiplier of the schedule's last phase."""
    log_every: Grid(PositiveInt) = DEFAULT_LOG_EVERY
    # not a grid and not in job ids: where a run resumes from does not change its result
    checkpoint_every: NonNegInt = DEFAULT_CHECKPOINT_EVERY
    """Training steps between the checkpoints the driver keeps of a running job (resumed on a retry
    or re-run, removed when the job finishes); 0 = none. One value for the sweep."""
    # transformer tasks only (names.TRANSFORMER_SHAPE)
    n_layers: Grid(PositiveInt) = _unset("the task's model (transformer tasks)")
    n_heads: Grid(PositiveInt) = _unset("the task's model (transformer tasks)")
    d_model: Grid(PositiveInt) = _unset("the task's model (transformer tasks)")
    d_head: Grid(PositiveInt) = _unset("the task's model (transformer tasks)")
    d_mlp: Grid(NonNegInt) = _unset("the task's model (transformer tasks); 0 = attention-only")


class Discover(Table):
    """A discovery grid, run on every trained model: give threshold or target_f (not both)."""

    method: Grid(Choice(METHODS))
    threshold: Grid(NonNegFloat) = _unset("give target_f")
    """acdc: tau; score methods: keep |score| >= threshold."""
    target_f: Grid(Faithfulness) = _unset("give threshold")
    """acdc: the largest tau reaching faithfulness >= target_f; score methods: the smallest top-k."""
    order: Grid(Choice(ORDERS)) = DEFAULT_ORDER
    """acdc's sender order (score methods have none: put them in their own table)."""
    ablation: Grid(Choice(ABLATIONS)) = DEFAULT_ABLATION
    output: Grid(NonNegInt) = _unset("the circuit of all outputs")
    metric: Grid(Choice(CIRCUIT_METRICS)) = _unset("the task's metric (mse or kl)")
    """The circuit metric (workers.graph.Metric); logit_diff needs every task to be a classifier."""
    seed: Grid(NonNegInt) = 0
    """The corruption pairing's seed."""
    # a filter, not a setting: not in the job id
    train_seed: Grid(NonNegInt) = _unset("every model")
    """Which models this grid applies to, by their training seed."""


class Resources(Table):
    """What one Ray task asks for."""

    train_cpus: PositiveFloat = 1.0
    train_gpus: NonNegFloat = 0.0
    discover_cpus: PositiveFloat = 1.0
    discover_gpus: NonNegFloat = 0.0
    max_retries: NonNegInt = 2
    edge_chunk: NonNegInt = 0
    """exact: edges per Ray task; 0 = one task per job."""


class Prune(Table):
    """The prune regime's settings (workers.prune)."""

    finetune_steps: PositiveInt = _unset("a tenth of the train steps")
    match_fraction: OpenFraction = DEFAULT_MATCH_FRACTION
    """Count the matched model's weights with |w| > match_fraction x max|w|."""


class Testing(Table):
    """TEST-ONLY fault injection: job selectors ("train", "discover", a job label prefix or id)."""

    transient_once: list[Selector] = []
    crash_once: list[Selector] = []
    hold: list[Selector] = []
    """Jobs that wait at their start until the file SWEEP/.release exists (a local run only)."""
    crash_after_checkpoint: list[Selector] = []
    """Train jobs whose first attempt dies right after the driver holds its first checkpoint."""
    noop: list[Selector] = []
    """These jobs do no work: each returns a tiny finished record at once (benchmarks of the driver,
    benchmarks/cluster_sim.py)."""


def _one_or_more(table):
    return Union[table, Annotated[list[table], Field(min_length=1)]]


class SpecFile(Table):
    """A circuitry sweep spec (TOML): `circuitry run SPEC`."""

    model_config = ConfigDict(title="circuitry sweep spec")
    sweep: Sweep
    train: _one_or_more(Train)
    """[train], or [[train]] for several grids (a job named by two runs once)."""
    discover: _one_or_more(Discover) = _unset("no discovery")
    """[discover], or [[discover]] for several grids."""
    resources: Resources = Field(default_factory=Resources)
    prune: Prune = Field(default_factory=Prune)
    testing: Testing = Field(default_factory=Testing)


TABLES = tuple(SpecFile.model_fields)
REQUIRED = object()  # a field's default when it must be given


def _field_checks(table: type[Table]) -> dict[str, tuple]:
    """(checker, default) per field of a table; default `REQUIRED` when the field must be given."""
    out = {}
    for key, f in table.model_fields.items():
        check = next((m.check for m in f.metadata if isinstance(m, Checked)), None)
        out[key] = (check, REQUIRED if f.is_required() else f.get_default(call_default_factory=True))
    return out


def spec_schema() -> dict:
    """The JSON Schema of a spec file (`circuitry schema`)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **SpecFile.model_json_schema()}


# (checker, default) per field, for the checks below
SWEEP_FIELDS, TRAIN_GRID, DISCOVER_GRID = _field_checks(Sweep), _field_checks(Train), _field_checks(Discover)
RESOURCE_FIELDS, PRUNE_FIELDS, TESTING_FIELDS = _field_checks(Resources), _field_checks(Prune), _field_checks(Testing)
