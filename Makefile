# pointrl: `make demo` and `make test` work on a fresh machine as the first command (they install what they need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo bench bench-learning clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pointrl needs Python >= 3.11 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

demo: install
	$(BIN)/python rl/train_grca.py --config rl/configs/demo.yaml

bench: install
	$(BIN)/python bench/rewards_bench.py
	$(BIN)/python bench/data_bench.py

bench-learning: install
	$(BIN)/python bench/learning_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
