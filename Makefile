# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FOLDER ?=
# e.g. https://download.pytorch.org/whl/cpu: torch from that index first (CPU-only: no CUDA libraries)
TORCH_INDEX ?=
QUERY ?=

.PHONY: install demo test lint bench

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --disable-pip-version-check torch torchvision --index-url $(TORCH_INDEX),)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[all]'
	touch $@

install: $(VENV)/.installed

# index FOLDER (default: real sample photos shipped by scikit-image), serve it over gRPC and the
# search page (dff-web), print both addresses, query once through the client, print the ranking;
# in a terminal keep serving until Ctrl-C (dff-demo --no-serve stops at once)
demo: install
	$(BIN)/dff-demo $(FOLDER) $(if $(QUERY),--query $(QUERY),)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_descriptors.py
