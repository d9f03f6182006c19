# The two entry points: `make serve` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# "strict" editable mode links each module file, so the package-dir mapping (nodes/ -> siot.nodes,
# cmd/ -> siot.cmd, a namespace package) resolves exactly as in a wheel; re-linking picks up new files.
EDITABLE := --config-settings editable_mode=strict

.PHONY: install serve test lint format bench clean

$(BIN)/.deps-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' $(EDITABLE)
	touch $@

install: $(BIN)/.deps-installed
	$(BIN)/pip install -q --no-deps -e . $(EDITABLE)

serve: install
	$(BIN)/siot serve --data ./data

# Debian programs the tests run for real; installed when missing (as root, as on CI), else each
# test that needs one fails with the apt-get command.
TEST_PACKAGES := curl influxdb prometheus victoria-metrics chromium mosquitto-clients

test: install
	$(BIN)/python -P -m siot.cmd.debian_packages $(TEST_PACKAGES)
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/siot bench ingest

clean:
	rm -rf $(VENV) build *.egg-info
