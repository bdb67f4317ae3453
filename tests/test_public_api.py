"""The Python API a notebook uses (`import circuitry`), and an install that adds no generic
top-level names to site-packages."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import circuitry

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path) -> str:
    """`code` in a fresh interpreter of this venv, from `cwd` (outside the repository: only what is
    installed can be imported, not the repository's folders)."""
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_import_circuitry_gives_the_api_lazily(tmp_path):
    out = json.loads(run_python(
        "import json, sys, circuitry\n"
        "before = 'torch' in sys.modules\n"
        "circuitry.discover, circuitry.train, circuitry.load_circuit, circuitry.run_sweep, circuitry.validate\n"
        "print(json.dumps({'torch_at_import': before, 'names': sorted(circuitry.__all__)}))", tmp_path))
    assert out["torch_at_import"] is False
    assert {"discover", "find_circuit", "DiscoverConfig", "train", "TrainConfig", "load_checkpoint", "load_circuit",
            "run_sweep", "validate"} <= set(out["names"])
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        circuitry.nope  # noqa: B018


def test_site_packages_holds_no_generic_top_level_names(tmp_path):
    found = json.loads(run_python(
        "import importlib.util, json\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in ('tasks', 'workers', 'orchestrator')}))",
        tmp_path))
    assert found == {"tasks": False, "workers": False, "orchestrator": False}
    where = run_python("import circuitry.workers.discover as d; print(d.__file__)", tmp_path).strip()
    assert Path(where) == ROOT / "workers" / "discover.py"  # the editable install maps circuitry.workers here


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    ckpt = circuitry.train(circuitry.TrainConfig("independence", "bimt", 300, width=6, log_every=100,
                                                 device="cpu")).checkpoint
    d = circuitry.find_circuit(ckpt, circuitry.DiscoverConfig("acdc", threshold=1e-3))
    out = tmp_path_factory.mktemp("circuit")
    from circuitry.workers.discover import write_discovery

    write_discovery(d, out, ckpt)
    return ckpt, d, out / "circuit.parquet"


def test_load_circuit_gives_back_the_discovered_masks(discovered):
    ckpt, d, path = discovered
    assert 0 < d.summary["n_edges_kept"] < d.summary["n_edges_total"]  # a circuit, not all or nothing
    for masks in (circuitry.load_circuit(path), circuitry.load_circuit(path, list(ckpt["shape"]))):
        assert [tuple(m.shape) for m in masks] == [tuple(m.shape) for m in d.masks]
        assert all(m.dtype == torch.bool and torch.equal(m, k) for m, k in zip(masks, d.masks))


def test_discover_and_find_circuit_agree(discovered):
    ckpt, d, _ = discovered
    same = circuitry.discover(ckpt, "acdc", 1e-3)
    assert same.table.equals(d.table, check_metadata=True)


def test_validate_names_the_jobs_of_a_spec():
    spec = circuitry.validate(ROOT / "examples" / "quickstart.toml")
    assert spec.train_jobs() and spec.discover_jobs()
    from circuitry.orchestrator.spec import SpecError

    with pytest.raises(SpecError, match="no such spec file"):
        circuitry.validate(ROOT / "examples" / "nope.toml")


def test_run_sweep_runs_and_resumes(ray_local, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(f'[sweep]\nname = "api"\nroot = "{tmp_path}"\nmetrics_port = -1\n'
                    '[train]\ntask = "independence"\nregime = "vanilla"\nsteps = 5\nwidth = 3\nlog_every = 5\n')
    out = circuitry.run_sweep(spec, record_mlflow=False)
    assert (out.finished, out.failed, out.cached) == (1, 0, 0)
    again = circuitry.run_sweep(spec, record_mlflow=False)
    assert (again.finished, again.cached) == (0, 1)
