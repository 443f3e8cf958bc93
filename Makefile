# Two commands do all set-up on a fresh machine:
#   make demo   installs everything, generates sample data, preprocesses, trains, infers
#   make test   installs everything, checks the import contracts and runs the test suite
# Everything is installed into and run with the project venv .venv/ (made with the machine's
# python3); PYTHON=/path/to/python uses that interpreter instead (e.g. a conda env).
DEMO_DIR ?= demo
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
# scripts/install.sh prints the interpreter it installed into on its last line.
INSTALLED_PYTHON = $$(bash scripts/install.sh | tail -n 1)
# import-linter's lint-imports, run by the interpreter it was installed into: the import
# contracts of setup.cfg (stages, layers, leaves, no circles; docs/architecture.md).
LINT_IMPORTS = import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())

.PHONY: install demo test lint help

install: ## install the package and its dependencies into .venv (or PYTHON)
	@bash scripts/install.sh >/dev/null

demo: ## sample data, preprocess, train and infer end to end (into DEMO_DIR, default demo/)
	@py=$(INSTALLED_PYTHON) && PYTHON="$$py" bash scripts/demo.sh $(DEMO_DIR)

lint: ## check the import contracts of setup.cfg (lint-imports)
	@py=$(INSTALLED_PYTHON) && "$$py" -c "$(LINT_IMPORTS)" --no-cache

# The suite runs on one pytest-xdist worker per core (PYTEST_XDIST_AUTO_NUM_WORKERS=N for others),
# a test file at a time per worker (its module fixtures are built once), and names its 15 slowest tests.
test: ## check the import contracts, then run the whole test suite
	@py=$(INSTALLED_PYTHON) && "$$py" -c "$(LINT_IMPORTS)" --no-cache && \
		"$$py" -m pytest -q -n auto --dist loadfile --durations=15 tests

help: ## list these targets, one line each
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
