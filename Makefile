# Every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
MAPEMESH_BROKER_PORT ?= 8080
export MAPEMESH_BROKER_PORT

.PHONY: install run test bench lint format schemas images clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# The local mesh on this machine (no Kubernetes), with a demo event; Ctrl-C stops it.
run: install
	@$(BIN)/python -m mapemesh.cli.demo

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

# mapemesh's images for a cluster (Containerfile: functions, api, node-shim; bunny: the policies and the
# accelerated example as urunc unikernels). REGISTRY=host/path tags them there and pushes them (kind.local,
# dev.local, ko.local: tagged only, for kind load docker-image).
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
ENGINES  := docker podman nerdctl
REGISTRY ?=
CONTEXTS ?= build/images
images: install
	@engine=""; for e in $(ENGINES); do command -v $$e >/dev/null 2>&1 && $$e info >/dev/null 2>&1 && { engine=$$e; break; }; done; \
	if [ -z "$$engine" ]; then \
	  echo "make images: no container engine answers on this machine ($(ENGINES) with a running daemon): nothing was built" >&2; exit 3; \
	fi; \
	set -e; prefix="$(if $(REGISTRY),$(REGISTRY)/,)"; \
	for target in functions api node-shim; do \
	  $$engine build -f Containerfile --target $$target -t $${prefix}mapemesh/$$target:$(VERSION) .; \
	done; \
	for f in bunnyfiles/policy-*.bunnyfile bunnyfiles/accel-*.bunnyfile; do \
	  name=$$(basename $$f .bunnyfile); \
	  $(BIN)/mapemesh build render $$name --out $(CONTEXTS)/$$name --build; \
	  if [ -n "$(REGISTRY)" ]; then $$engine tag mapemesh/$$name:$(VERSION)-urunc $${prefix}mapemesh/$$name:$(VERSION)-urunc; fi; \
	done; \
	case "$(REGISTRY)" in *.local) echo "make images: $(REGISTRY) is no registry (kind load docker-image ... instead)"; exit 0;; esac; \
	if [ -n "$(REGISTRY)" ]; then \
	  for image in $$($$engine images --format '{{.Repository}}:{{.Tag}}' | grep "^$${prefix}mapemesh/.*:$(VERSION)"); do $$engine push $$image; done; \
	fi

clean:
	rm -rf $(VENV) .mapemesh .pytest_cache .ruff_cache bench/results
