# glance-lite: one entry point.  `make book` builds the book, `make test` runs every test.
# Both create .venv and install the package with its extras first (nothing else is needed but
# Python 3.11 and pip).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.glance-installed

.PHONY: all setup book test unit nbval book-smoke results bench clean clean-book

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[book,test]"
	touch $(STAMP)

setup: $(STAMP)

# The book: executes every notebook with the preset that fits the machine (GLANCE_PRESET, or
# `paper` on CUDA / `cpu` otherwise), using Jupyter Book's execution cache; a notebook error fails.
book: $(STAMP)
	$(BIN)/jupyter-book build . --builder html
	@echo "book: open _build/html/index.html"

# The tests: unit tests, then every notebook through nbval, then a warnings-as-errors book
# build, all with the smoke preset.
test: $(STAMP)
	GLANCE_PRESET=smoke $(BIN)/python -m pytest tests -q
	GLANCE_PRESET=smoke $(BIN)/python -m pytest --nbval-lax notebooks/ -q -p no:cacheprovider
	GLANCE_PRESET=smoke $(BIN)/jupyter-book build . --builder html -W -n --keep-going --path-output _build/smoke

unit: $(STAMP)
	GLANCE_PRESET=smoke $(BIN)/python -m pytest tests -q

# Regenerate the committed results files the reproduction chapters show (long; CPU or GPU).
results: $(STAMP)
	$(BIN)/glance-lite reproduce --out results

bench: $(STAMP)
	$(BIN)/python -m glance_lite.bench

clean-book:
	rm -rf _build

clean: clean-book
	rm -rf $(VENV) *.egg-info
