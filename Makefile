# Every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
MAPEMESH_BROKER_PORT ?= 8080
export MAPEMESH_BROKER_PORT

.PHONY: install run test bench lint format schemas clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# The local mesh on this machine (no Kubernetes), with a demo event; Ctrl-C stops it.
run: install
	@$(BIN)/python -m mapemesh.demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check .
	$(BIN)/python -m mapemesh.events.export --check

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-export the CloudEvent JSON Schemas to events/schemas/ after changing the catalogue.
schemas: install
	$(BIN)/python -m mapemesh.events.export

clean:
	rm -rf $(VENV) .mapemesh .pytest_cache .ruff_cache bench/results
