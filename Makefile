# The two commands a newcomer needs: `make test` and `make run`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test fuzz run bench sim lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check node protocols simulations tests benchmarks
	$(VENV)/bin/ruff format --check node protocols simulations tests benchmarks
	$(VENV)/bin/mypy node protocols simulations

# A fixed seed makes `make test` repeatable (tests/fuzz runs a few inputs per decoder and
# method); `make fuzz` explores new inputs each run, many more of them (PYRGOS_FUZZ=deep).
test: lint
	$(PY) -X dev -b -m pytest -q --hypothesis-seed=0

fuzz: $(STAMP)
	PYRGOS_FUZZ=deep $(PY) -X dev -b -m pytest -q tests/protocols tests/fuzz -p no:cacheprovider

run: $(STAMP)
	$(VENV)/bin/pyrgos node init --exist-ok
	$(VENV)/bin/pyrgos node run

bench: $(STAMP)
	$(PY) benchmarks/run.py

# Whole swarms in one process on virtual time, model-checked; one seed, one report
# (docs/simulation.md). SIM="faults lossy scale large" SEED=1 by default; `large` (1,000
# nodes, 10,000 users) takes about 8 minutes and 18 GB of memory and tmpfs.
SIM ?= faults lossy scale large
SEED ?= 1
sim: $(STAMP)
	$(PY) -m simulations $(SIM) --seed $(SEED)

clean:
	rm -rf $(VENV) build dist *.egg-info
