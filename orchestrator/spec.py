"""Sweep specs: parse a TOML file into checked tables, every field validated before anything runs
(the field checkers: orchestrator.checkers); the tables' grids become the job graph in
orchestrator.jobs (ids are content hashes: docs/design.md, "Identity and resume").

A spec (see examples/quickstart.toml):

    [sweep]      name, root (folder the sweep folder goes under; relative = to the driver's working
                 directory; only the driver writes it, workers need no access to it),
                 tracking_uri ("" = an SQLite store in the sweep folder), metrics_port
                 (Prometheus; 0 = any free port, -1 = off), metrics_host (address the endpoint
                 binds: 127.0.0.1, or 0.0.0.0 so a cluster's Prometheus can reach it),
                 metrics_linger, pushgateway, pictures (network.png / circuit.png per job)
    [train]      grid: task, regime, seed, steps, lam, lr, width, swap_every, top_k, final_factor,
                 log_every, and for transformer tasks n_layers, n_heads, d_model, d_head, d_mlp
                 (each a value or a list of values; lists multiply; lam, lr, swap_every, top_k,
                 final_factor default to the task's BIMT recipe, tasks.recipe; the shape fields
                 to the task's model, tasks.sequence); and checkpoint_every, one value for the
                 sweep, no grid and not in job ids (orchestrator.checkpoints)
    [prune]      finetune_steps (default: a tenth of the train steps), match_fraction (1e-2): the
                 `prune` regime's settings (workers.prune); regime "prune" in [train] adds, for
                 every grid point, a job that prunes the vanilla model of the same task, seed and
                 steps to the weight count of that point's bimt model (the spec must have both)
    [discover]   grid: method, threshold or target_f (one of them), order, ablation, output, seed,
                 metric (default: the task's; logit_diff for classifiers), train_seed (optional
                 table: no discovery; [[discover]] for several grids)
    [resources]  train_cpus, train_gpus, discover_cpus, discover_gpus, max_retries, edge_chunk
    [testing]    TEST-ONLY fault injection: transient_once, crash_once, crash_after_checkpoint, hold, noop
                 (job selectors, see below)

The tables are pydantic models (Sweep, Train, Discover, Resources, Prune, Testing, SpecFile in
orchestrator.spec_tables): each field's type, allowed values, default and meaning, written once; `circuitry schema` prints
their JSON Schema for editors. Each field's type carries a checker that validates a value and
words the error: every error is one line that names the field path, the bad value and what is
allowed, e.g. `train.regime[2]: "bimtt" is not one of vanilla, l1, local, swap, bimt, prune`.
"""
from __future__ import annotations

import math
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from circuitry.orchestrator import checkers
from circuitry.orchestrator.checkers import SpecError
from circuitry.orchestrator.count import JobCount, count_jobs
from circuitry.orchestrator.jobs import Job, MissingModels, expand
from circuitry.orchestrator.spec_tables import (DISCOVER_GRID, PRUNE_FIELDS, REQUIRED, RESOURCE_FIELDS, SWEEP_FIELDS, TABLES,
                                                TESTING_FIELDS, TRAIN_GRID)
# the tables themselves, re-exported: readers of a spec find them here
from circuitry.orchestrator.spec_tables import (Discover, Prune, Resources, SpecFile, Sweep, Testing,  # noqa: F401
                                                Train, spec_schema)  # noqa: F401
from circuitry.tasks import TASKS
from circuitry.workers.names import DEFAULT_CHECKPOINT_EVERY, DEFAULT_ORDER, TRANSFORMER_SHAPE


class _Problems:
    """Every problem of a spec at once (a spec with `bimtt`, `stpes` and `treshold` names all
    three): `with problems.check():` records a SpecError and goes on; `raise_any()` raises one
    SpecError naming them all, in the order found, separated by "; "."""

    def __init__(self):
        self.messages: list[str] = []

    @contextmanager
    def check(self):
        try:
            yield
        except SpecError as e:
            self.messages.extend(getattr(e, "problems", [str(e)]))

    def raise_any(self) -> None:
        if self.messages:
            messages = list(dict.fromkeys(self.messages))
            head = f"{len(messages)} problems: " if len(messages) > 1 else ""
            err = SpecError(head + "; ".join(messages))
            err.problems = messages
            raise err


def _unknown_keys(table: str, given: dict, allowed: dict) -> None:
    problems = _Problems()
    problems.messages = [f"{table}.{key}: unknown field; allowed: {', '.join(allowed)}"
                         f"{checkers.did_you_mean(key, allowed)}" for key in given if key not in allowed]
    problems.raise_any()


def _scalars(table: str, given: dict, fields: dict) -> dict:
    problems = _Problems()
    with problems.check():
        _unknown_keys(table, given, fields)
    out = {}
    for key, (check, default) in fields.items():
        with problems.check():
            if key not in given:
                if default is REQUIRED:
                    raise SpecError(f"{table}.{key}: missing; this field is required")
                out[key] = default
                continue
            out[key] = check(f"{table}.{key}", given[key])
    problems.raise_any()
    return out


def _grid(table: str, given: dict, fields: dict) -> dict[str, list]:
    problems = _Problems()
    with problems.check():
        _unknown_keys(table, given, fields)
    out = {}
    for key, (check, default) in fields.items():
        with problems.check():
            out[key] = _grid_values(table, key, given, check, default)
    problems.raise_any()
    return out


def _grid_values(table: str, key: str, given: dict, check, default) -> list:
    if key not in given:
        if default is REQUIRED:
            raise SpecError(f"{table}.{key}: missing; give a value or a list of values")
        return [default]
    raw = given[key]
    if isinstance(raw, dict):
        raise SpecError(f"{table}.{key}: a table is not allowed here; give a value or a list of values")
    if isinstance(raw, list):
        if not raw:
            raise SpecError(f"{table}.{key}: [] is empty; give at least one value")
        vals = [check(f"{table}.{key}[{i}]", v) for i, v in enumerate(raw)]
    else:
        vals = [check(f"{table}.{key}", raw)]
    seen = set()
    for i, v in enumerate(vals):
        if v in seen:
            raise SpecError(f"{table}.{key}[{i}]: {checkers.show(v)} is listed twice; list each value once")
        seen.add(v)
    return vals


def _table_names(table: str, value) -> list[str]:
    """How errors name a table: `train` for [train], `train[1]` for the second [[train]]."""
    return [f"{table}[{i}]" for i in range(len(value))] if isinstance(value, list) else [table]


def _grids(table: str, value, fields: dict) -> list[dict[str, list]]:
    tables = value if isinstance(value, list) else [value]
    problems, grids = _Problems(), []
    for name, t in zip(_table_names(table, value), tables):
        with problems.check():
            grids.append(_grid(name, t, fields))
    problems.raise_any()
    return grids


def _checkpoint_every(value, grids: list[dict[str, list]]) -> int:
    """[train] checkpoint_every, taken out of the grids (it is no grid field and not in job ids):
    one value, the same in every [[train]] table that gives it."""
    tables = value if isinstance(value, list) else [value]
    found = [(name, grid.pop("checkpoint_every"), "checkpoint_every" in t)
             for name, t, grid in zip(_table_names("train", value), tables, grids)]
    for name, values, _ in found:
        if len(values) > 1:
            raise SpecError(f"{name}.checkpoint_every: {values} is a list; give one number of steps (it is no grid field)")
    given = sorted({values[0] for _, values, in_table in found if in_table})
    if len(given) > 1:
        raise SpecError(f"train.checkpoint_every: the [[train]] tables give {', '.join(map(str, given))}; give one "
                        "value (it applies to the whole sweep)")
    return given[0] if given else DEFAULT_CHECKPOINT_EVERY


def _check_selection(name: str, grid: dict[str, list]) -> None:
    """A [discover] table selects edges by threshold or by target_f, never both or neither, and
    names a sender order other than ascending only for acdc (score methods have none)."""
    has_threshold, has_target = grid["threshold"] != [None], grid["target_f"] != [None]
    if has_threshold and has_target:
        raise SpecError(f"{name}.target_f: give either threshold or target_f, not both; put each in its own "
                        "[[discover]] table")
    if not has_threshold and not has_target:
        raise SpecError(f"{name}.threshold: missing; give threshold (tau, e.g. 0.01) or target_f (a faithfulness, "
                        "e.g. 0.95)")
    scorers = [m for m in grid["method"] if m != "acdc"]
    if scorers and grid["order"] != [DEFAULT_ORDER]:
        raise SpecError(f"{name}.order: the sender order is acdc's; put {', '.join(scorers)} in its own "
                        "[[discover]] table without order")


@dataclass
class Spec:
    name: str
    root: Path
    tracking_uri: str
    metrics_port: int
    train: list[dict[str, list]]  # one grid per [train] / [[train]] table
    discover: list[dict[str, list]] | None  # one grid per [discover] / [[discover]] table
    resources: dict
    testing: dict
    source: str = ""  # the TOML text
    metrics_host: str = "127.0.0.1"
    metrics_linger: float = 10.0
    pushgateway: str = ""
    pictures: bool = True
    prune: dict = field(default_factory=dict)  # the [prune] table
    jobs: list[Job] = field(default_factory=list)
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # [train]: one value for the sweep

    @property
    def sweep_dir(self) -> Path:
        return self.root / self.name

    def train_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.kind == "train"]

    def discover_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.kind == "discover"]

    def n_chunk_tasks(self) -> int:
        chunk = self.resources["edge_chunk"]
        return sum(math.ceil(j.n_edges / chunk) for j in self.discover_jobs()
                   if j.settings["method"] == "exact" and chunk and j.n_edges > chunk)



def parse_spec(text: str, origin: str = "spec", root: str | Path | None = None) -> Spec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{origin}: not valid TOML ({e})") from None
    problems = _Problems()  # every problem of the tables at once, then the checks across them
    for table, value in list(raw.items()):
        with problems.check():
            if table not in TABLES:
                del raw[table]
                raise SpecError(f"{table}: unknown table; allowed: {', '.join(TABLES)}"
                                f"{checkers.did_you_mean(table, TABLES)}")
            if table in ("train", "discover") and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                continue  # [[train]] / [[discover]]: several grids, e.g. one lam grid per task
            if not isinstance(value, dict):
                del raw[table]
                raise SpecError(f"{table}: {checkers.show(value)} is not a table; write [{table}]")
    if "sweep" not in raw or "train" not in raw:  # nothing else can be checked without them
        problems.messages += [f"{t}: missing table; a spec needs [sweep] and [train]" for t in ("sweep", "train")
                              if t not in raw and not any(m.startswith(f"{t}:") for m in problems.messages)]
        problems.raise_any()
    sweep = train = discover = resources = prune = None
    with problems.check():
        sweep = _scalars("sweep", raw["sweep"], SWEEP_FIELDS)
    checkpoint_every = DEFAULT_CHECKPOINT_EVERY
    with problems.check():
        train = _grids("train", raw["train"], TRAIN_GRID)
        checkpoint_every = _checkpoint_every(raw["train"], train)
    if "discover" in raw:
        names = _table_names("discover", raw["discover"])
        with problems.check():
            discover = _grids("discover", raw["discover"], DISCOVER_GRID)
            for name, grid in zip(names, discover):
                with problems.check():
                    _check_selection(name, grid)
    with problems.check():
        resources = _scalars("resources", raw.get("resources", {}), RESOURCE_FIELDS)
    with problems.check():
        prune = _scalars("prune", raw.get("prune", {}), PRUNE_FIELDS)
    testing_raw = raw.get("testing", {})
    with problems.check():
        _unknown_keys("testing", testing_raw, TESTING_FIELDS)
    testing = {}
    for key, (_, default) in TESTING_FIELDS.items():
        with problems.check():
            val = testing_raw.get(key, default)
            if not isinstance(val, list):
                raise SpecError(f"testing.{key}: {checkers.show(val)} is not a list of job selectors")
            testing[key] = [checkers.selector(f"testing.{key}[{i}]", v) for i, v in enumerate(val)]
    problems.raise_any()

    for name, grid in zip(names if discover else [], discover or []):
        for i, metric in enumerate(grid["metric"]):
            for task in sorted({t for g in train for t in g["task"]}):
                if metric == "logit_diff" and TASKS[task].kind != "classification":
                    raise SpecError(f"{name}.metric[{i}]: logit_diff needs a classifier; task {task} is a "
                                    f"{TASKS[task].kind} (leave metric out: its own is {TASKS[task].metric})")
                if metric == "logit_diff" and any(o is not None for o in grid["output"]):
                    raise SpecError(f"{name}.metric[{i}]: logit_diff reads every output; drop output")
        for i, out in enumerate(grid["output"]):
            if out is None:
                continue
            for task in sorted({t for g in train for t in g["task"]}):
                n_out = TASKS[task].n_outputs
                if out >= n_out:
                    raise SpecError(f"{name}.output[{i}]: {out} is not an output of task {task} "
                                    f"(it has outputs 0..{n_out - 1})")
    for name, grid in zip(_table_names("train", raw["train"]), train):
        for i, w in enumerate(grid["width"]):
            if w is not None and w > 4096:
                raise SpecError(f"{name}.width[{i}]: {w} is too wide; allowed: 1..4096")
        _check_model_fields(name, grid)
    root_path = Path(root if root is not None else sweep["root"]).expanduser()
    spec = Spec(sweep["name"], root_path, sweep["tracking_uri"], sweep["metrics_port"], train, discover,
                resources, testing, text, sweep["metrics_host"], sweep["metrics_linger"], sweep["pushgateway"],
                sweep["pictures"])
    spec.prune, spec.checkpoint_every = prune, checkpoint_every
    _within_max_jobs(count_jobs(train, discover), sweep["max_jobs"])
    try:
        spec.jobs = expand(train, discover, prune=prune)
    except MissingModels as e:
        raise SpecError(str(e)) from None
    _within_max_jobs(JobCount(len(spec.jobs), 0), sweep["max_jobs"])  # when the count was an upper bound
    return spec


def _within_max_jobs(count: JobCount, max_jobs: int) -> None:
    if count.exact and count.total > max_jobs:
        raise SpecError(f"sweep.max_jobs: the grids expand to {count.total:,} jobs ({count.train:,} train + "
                        f"{count.discover:,} discover), over max_jobs = {max_jobs:,}; shrink the grids, split the "
                        "sweep, or raise sweep.max_jobs")


def _check_model_fields(name: str, grid: dict[str, list]) -> None:
    """width reshapes MLP tasks, the transformer shape fields transformer tasks: a field set for a
    task of the other kind is an error, not silently ignored."""
    kinds = {t: TASKS[t].transformer is not None for t in grid["task"]}
    for field_name in ("width", *TRANSFORMER_SHAPE):
        if all(v is None for v in grid[field_name]):
            continue
        wrong = [t for t, is_transformer in kinds.items() if is_transformer != (field_name != "width")]
        if wrong:
            kind = "transformer" if field_name == "width" else "MLP"
            fix = "use n_layers, n_heads, d_model, d_head, d_mlp" if field_name == "width" else "use width"
            raise SpecError(f"{name}.{field_name}: task {wrong[0]} trains a{'n' if kind == 'MLP' else ''} {kind}; "
                            f"{fix}, or put it in its own [[train]] table")


def load_spec(path: str | Path, root: str | Path | None = None) -> Spec:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file; give the path of a .toml sweep spec") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder; give the path of a .toml sweep spec") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file; give a UTF-8 TOML sweep spec") from None
    return parse_spec(text, str(path), root)


