# Two commands do all set-up on a fresh machine:
#   make demo   installs everything, generates sample data, preprocesses, trains, infers
#   make test   installs everything and runs the test suite
PYTHON ?= python3
DEMO_DIR ?= demo
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install demo test

install:
	bash scripts/install.sh

demo: install
	bash scripts/demo.sh $(DEMO_DIR)

test: install
	$(PYTHON) -m pytest -q tests
