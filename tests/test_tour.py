"""examples/tour.ipynb runs: its code cells, in order, in one namespace (what a kernel running
the notebook top to bottom does), on the public API."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "tour.ipynb"


def test_tour_notebook_runs():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells and all("import circuitry." not in c and "from circuitry." not in c for c in cells)  # public API only
    namespace: dict = {}
    for i, source in enumerate(cells):
        exec(compile(source, f"{NOTEBOOK.name}[code cell {i}]", "exec"), namespace)
    circuits = namespace["circuits"]
    assert set(circuits) == {"vanilla", "bimt"}
    for d in circuits.values():
        assert 0 < d.summary["n_edges_kept"] < d.summary["n_edges_total"]
        assert d.summary["faithfulness"] >= 0.9
