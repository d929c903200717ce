# Two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean deb wheel image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/nodewarden run --state-dir ./var

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Debian package (dist/nodewarden_VERSION-1_ARCH.deb): private venv under /usr/lib/nodewarden, see docs/packaging.md
deb: $(STAMP)
	packaging/deb/build.sh dist

# The wheel the .deb and the container image (deploy/Dockerfile) install
wheel: $(STAMP)
	rm -f dist/nodewarden-*.whl
	$(BIN)/pip wheel -q --no-deps -w dist .

image: wheel
	docker build -f deploy/Dockerfile -t nodewarden:latest .

clean:
	rm -rf $(VENV) var var-sim build dist *.egg-info
