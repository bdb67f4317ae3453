# The two commands the README opens with. Both build .venv from scratch when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install demo test bench clean

$(BIN)/circuitry: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/circuitry

demo: install
	$(BIN)/circuitry run examples/quickstart.toml
	$(BIN)/circuitry report sweeps/quickstart

test: install
	$(BIN)/python -m pytest -q || { rc=$$?; $(BIN)/python tests/crash_report.py; exit $$rc; }

bench: install
	$(BIN)/python benchmarks/swap.py
	$(BIN)/python benchmarks/regimes.py
	$(BIN)/python benchmarks/acdc.py
	$(BIN)/python benchmarks/orchestration.py

clean:
	rm -rf $(VENV) *.egg-info
