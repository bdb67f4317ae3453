"""The job graph of a checked spec: every train and discover job, named by a content hash of
what it computes (docs/design.md, "Identity and resume"), so a sweep run again finds the jobs
it has already done.

A job id hashes the job's kind, the package version and its settings (a train job's with the
task's recipe resolved and the rest of the recipe, a discover job's with the id of the model it
reads), so the same settings always name the same job and different ones never do. Labels are
human-readable names built from the settings that vary within the sweep; they are not part of ids.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version

from circuitry.tasks import TASKS
from circuitry.workers.discover_config import DiscoverConfig
from circuitry.workers.names import (DEFAULT_MATCH_FRACTION, DEFAULT_ORDER, FRESH_EXAMPLES_ID, PENALTY_ONLY, PRUNE_FROM,
                                     PRUNE_MATCH, RECIPE_DEFAULTS, TRANSFORMER_SHAPE, edge_count, network_shape,
                                     resolved_swap_every)


class MissingModels(ValueError):
    """A prune point without the models it reads (the spec reports it as a `SpecError`)."""


def package_version() -> str:
    """Part of every job id: a sweep is never resumed by another version of the code."""
    try:
        return version("circuitry")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def _discover_payload(d: dict) -> dict:
    """The discover settings a job id hashes: the newer settings only where they are used (no
    target_f = None, no threshold = None, no default order, no metric = None), so that the ids of
    specs written before them stay what they were."""
    unused = {"threshold": None, "target_f": None, "order": DEFAULT_ORDER, "metric": None}
    return {k: v for k, v in d.items() if not (k in unused and v == unused[k])}


# Test splits that were capped at 1,000 examples per half before discovery used them whole
UNCAPPED_SPLITS = ("mnist",)


def _examples_payload(task: str) -> dict:
    """What a discover job's id records of its examples where they changed in issue 29 (the same
    circuit on other examples is another result, so a sweep must not resume the old one as it):
    2 x 1,000 fresh generator examples (workers.discover), or a test split no longer capped. The
    tasks whose examples did not change (digits, modular addition) keep their ids."""
    if TASKS[task].fresh is not None:
        return {"examples": FRESH_EXAMPLES_ID}
    return {"examples": "test-split-whole"} if task in UNCAPPED_SPLITS else {}


def job_hash(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

@dataclass(frozen=True, slots=True)  # slots: one per job of a spec, for the whole sweep
class Job:
    kind: str  # "train" or "discover"
    id: str
    settings: dict  # train: TrainConfig fields (task defaults resolved); discover: method etc.
    label: str  # human-readable, e.g. "train/independence/bimt/seed0"
    model_id: str | None = None  # discover: the id of the train job whose model it reads
    n_edges: int = 0  # edges of the model's dense neuron graph
    needs: tuple[str, ...] = ()  # prune: the ids of the (vanilla, bimt) train jobs whose models it reads

    def discover_config(self) -> DiscoverConfig:
        """A discover job's settings as the DiscoverConfig the worker runs; on the job's "device"
        setting when it has one, else "auto" (the GPU when the worker's torch sees one)."""
        return DiscoverConfig.from_settings(self.settings, device=self.settings.get("device") or "auto")

    def params(self) -> dict:
        out = {"job_id": self.id, "kind": self.kind, **self.settings}
        if self.model_id:
            out["model_id"] = self.model_id
        return out


def _resolve_train(s: dict) -> dict:
    """The task's recipe filled in the way workers.train.TrainConfig.resolved() does, so `lam = 1e-3`
    and an omitted lam with the task's default 1e-3 name the same job."""
    recipe = TASKS[s["task"]].recipe
    s = dict(s)
    swap_every = s["swap_every"]
    for key in RECIPE_DEFAULTS:
        if s[key] is None:
            s[key] = getattr(recipe, key)
    s["swap_every"] = resolved_swap_every(s["regime"], s["steps"], swap_every, recipe)
    return s


def _recipe_fields(task: str) -> dict:
    """The rest of the task's recipe (cost normalisation, l0, schedule, layout, loss, ...): part of a
    train job's id, so a sweep made under other task settings is never resumed as if it were this one."""
    return {k: list(map(list, v)) if k == "lam_phases" else v for k, v in asdict(TASKS[task].recipe).items()}


def _train_payload(s: dict, ver: str) -> dict:
    """What a train job id hashes: kind, version, recipe and settings; for a transformer task also
    the task's model (so a changed default model is a new job), and the transformer shape fields
    only where set (so MLP jobs keep the ids they had before those fields existed)."""
    settings = {k: v for k, v in s.items() if not (k in TRANSFORMER_SHAPE and v is None)}
    payload = {"kind": "train", "version": ver, "recipe": _recipe_fields(s["task"]), **settings}
    model = TASKS[s["task"]].transformer
    if model is not None:
        payload["model"] = asdict(model)
    return payload


def model_shape(settings: dict) -> list[int]:
    """The network a train job's settings describe (workers.train builds the same)."""
    return network_shape(TASKS[settings["task"]].shape, settings.get("width"))


def model_edges(settings: dict) -> int:
    """Edges of the dense neuron graph of the model a train job's settings describe."""
    return edge_count(model_shape(settings))


def _point(s: dict, ignore: tuple[str, ...] = ()) -> str:
    """A train job's settings but its regime (and `ignore`): what a prune job shares with its models."""
    return json.dumps({k: v for k, v in s.items() if k != "regime" and k not in ignore}, sort_keys=True)


def _prune_job(s: dict, models: dict, prune: dict, ver: str) -> Job:
    """The prune job of one grid point: it reads the vanilla model of its task, seed and steps and
    the bimt model of the same point, so their ids are part of its own (and of its settings, for
    the record)."""
    vanilla = models.get((PRUNE_FROM, _point(s, PENALTY_ONLY)))
    match = models.get((PRUNE_MATCH, _point(s)))
    if vanilla is None or match is None:
        raise MissingModels(f'train.regime: "prune" at {s["task"]} seed {s["seed"]} lam {s["lam"]} needs a "{PRUNE_FROM}" '
                        f'model of the same task, seed and steps and a "{PRUNE_MATCH}" model of the same point (it '
                        f"prunes the first to the weight count of the second); add them to the spec")
    s = {**s, "finetune_steps": prune["finetune_steps"] or max(1, s["steps"] // 10),
         "match_fraction": prune["match_fraction"], "vanilla_id": vanilla.id, "match_id": match.id}
    pid = job_hash(_train_payload(s, ver))
    return Job("train", pid, s, "", None, model_edges(s), (vanilla.id, match.id))


def expand(train: list[dict[str, list]], discover: list[dict[str, list]] | None, ver: str | None = None,
           prune: dict | None = None) -> list[Job]:
    """Train jobs: the product of each train grid (several [[train]] grids are unioned; a job named
    by two grids runs once); a "prune" point reads a vanilla and a bimt model (spec [prune]
    settings) and comes after them. Discover jobs: for every model, the product of each discover
    grid (unioned the same way)."""
    ver = ver or package_version()
    prune = {"finetune_steps": None, "match_fraction": DEFAULT_MATCH_FRACTION, **(prune or {})}
    trained: dict[str, dict] = {}  # job id -> settings, in the order the grids name them
    pruned: dict[str, dict] = {}  # a prune point's settings (as _point) -> settings
    for grid in train:
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            s = _resolve_train(dict(zip(keys, combo)))
            if s["regime"] == "prune":
                pruned.setdefault(_point(s), s)
            else:
                trained.setdefault(job_hash(_train_payload(s, ver)), s)
    jobs = [Job("train", tid, s, "", None, model_edges(s)) for tid, s in trained.items()]
    models: dict[tuple[str, str], Job] = {}  # (regime, settings but the regime [and PENALTY_ONLY]) -> job
    for j in jobs:
        models.setdefault((j.settings["regime"], _point(j.settings)), j)
        models.setdefault((j.settings["regime"], _point(j.settings, PENALTY_ONLY)), j)
    jobs += [_prune_job(s, models, prune, ver) for s in pruned.values()]
    # a label names what tells the sweep's models of one task apart: the settings that vary there
    # (the grids hold every train field, in the spec's order); a swap interval no grid gives varies
    # only as the defaults resolve it (by regime and steps), which the label already names
    given = {k for grid in train for k, values in grid.items() if any(v is not None for v in values)}
    varying = [k for k in (train[0] if train else ()) if k not in ("task", "regime", "seed")
               and (k != "swap_every" or k in given)
               and len({(j.settings["task"], repr(j.settings[k])) for j in jobs})
               > len({j.settings["task"] for j in jobs})]
    jobs = [replace(j, label=f"train/{j.settings['task']}/{j.settings['regime']}/seed{j.settings['seed']}"
                          + "".join(f"/{k}{j.settings[k]}" for k in varying)) for j in jobs]
    seen = set()
    for grid in discover or []:
        dkeys = list(grid)
        only = set(grid.get("train_seed", [None])) - {None}
        dkeys = [k for k in dkeys if k != "train_seed"]
        for tj in [j for j in jobs if j.kind == "train" and (not only or j.settings["seed"] in only)]:
            for combo in itertools.product(*(grid[k] for k in dkeys)):
                d = dict(zip(dkeys, combo))
                did = job_hash({"kind": "discover", "version": ver, "model_id": tj.id, **_discover_payload(d),
                                **_examples_payload(tj.settings["task"])})
                if did in seen:
                    continue
                seen.add(did)
                method = d["method"] if d["order"] == DEFAULT_ORDER else f"{d['method']}-{d['order']}"
                selection = f"t{d['threshold']}" if d["target_f"] is None else f"f{d['target_f']}"
                tail = f"{method}/{selection}/{d['ablation']}"
                if d["output"] is not None:
                    tail += f"/out{d['output']}"
                if d.get("metric") is not None:
                    tail += f"/{d['metric']}"
                if len(grid["seed"]) > 1:
                    tail += f"/dseed{d['seed']}"
                label = "discover/" + tj.label.removeprefix("train/") + "/" + tail
                jobs.append(Job("discover", did, {**d, "task": tj.settings["task"], "regime": tj.settings["regime"],
                                                   "train_seed": tj.settings["seed"]}, label, tj.id, tj.n_edges))
    return jobs

def matches(selectors: list[str], job: Job) -> bool:
    """Test-only fault selectors: a job kind ("train", "discover") or a prefix of a job label."""
    return any(s == job.kind or job.label.startswith(s) or s == job.id for s in selectors)
