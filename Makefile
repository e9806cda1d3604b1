# The two commands a newcomer needs: `make test` and `make run`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test fuzz run bench sim lint clean bytecode

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The project's own bytecode, written ahead as pip does for what it installs: where the
# environment sets PYTHONDONTWRITEBYTECODE, every `pyrgos` command would otherwise compile
# its 40-odd modules again (about 90 ms of each command's start). Up to date, this is a check
# of their times.
bytecode: $(STAMP)
	@$(PY) -m compileall -q node protocols simulations

lint: bytecode
	$(VENV)/bin/ruff check node protocols simulations tests benchmarks
	$(VENV)/bin/ruff format --check node protocols simulations tests benchmarks
	$(VENV)/bin/mypy node protocols simulations

# A fixed seed makes `make test` repeatable (tests/fuzz runs a few inputs per decoder and
# method); `make fuzz` explores new inputs each run, many more of them (PYRGOS_FUZZ=deep).
test: lint
	$(PY) -X dev -b -m pytest -q --hypothesis-seed=0

fuzz: $(STAMP)
	PYRGOS_FUZZ=deep $(PY) -X dev -b -m pytest -q tests/protocols tests/fuzz -p no:cacheprovider

run: bytecode
	$(VENV)/bin/pyrgos node init --exist-ok
	$(VENV)/bin/pyrgos node run

bench: bytecode
	$(PY) benchmarks/run.py

# Whole swarms in one process on virtual time, model-checked; one seed, one report
# (docs/simulation.md). SIM="faults lossy scale large" SEED=1 by default; `large` (1,000
# nodes, 10,000 users) takes about 8 minutes and 18 GB of memory and tmpfs.
SIM ?= faults lossy scale large
SEED ?= 1
sim: bytecode
	$(PY) -m simulations $(SIM) --seed $(SEED)

clean:
	rm -rf $(VENV) build dist *.egg-info
