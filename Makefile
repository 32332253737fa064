# glance-lite: one entry point.  `make book` builds the book, `make test` runs every test.
# Both create .venv and install the package with its extras first (`make book` needs nothing but
# Python 3.11 and pip; `make test` also needs Chromium for its browser check: tools/need_chromium.sh
# installs it where the user may, and otherwise stops at the start with the instruction).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.glance-installed
# MathJax, pinned and hash-checked, served from the book's _static (see tools/fetch_mathjax.py).
MATHJAX := _vendor/static/mathjax/tex-svg.js

.PHONY: all setup book test unit nbval book-smoke results bench paper-dry colab-check clean clean-book student grade

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[book,test]"
	touch $(STAMP)

# The book's offline assets: MathJax copied (no network) out of the pinned sphinx-mathjax-offline
# wheel that the install above brings from PyPI; re-run when the install or the script changes
# (the script itself does nothing when its stamp and tex-svg.js's hash match).
$(MATHJAX): $(STAMP) tools/fetch_mathjax.py
	$(BIN)/python tools/fetch_mathjax.py
	touch $(MATHJAX)

setup: $(STAMP) $(MATHJAX)

# The book: executes every notebook with the preset that fits the machine (GLANCE_PRESET, or
# `paper` on CUDA / `cpu` otherwise), using Jupyter Book's execution cache; a notebook error fails.
# Then, where Chromium is installed, the pages are checked in it and screenshotted into _build/screenshots.
book: $(STAMP) $(MATHJAX)
	$(BIN)/jupyter-book build . --builder html
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  $(BIN)/python tools/browser_check.py _build/html --screenshots _build/screenshots; \
	else echo "book: no Chromium, so no page check or screenshots (apt-get install chromium)"; fi
	@echo "book: open _build/html/index.html"

# The tests: unit tests, then every notebook executed through nbval with the smoke preset (a
# notebook error fails; nbval also runs the widget cells the book skips); both spread over every core
# (pytest-xdist, one thread per process, a notebook's cells kept on one worker), then a warnings-as-errors
# book build *with execution* (smoke preset), so that a broken cross-reference, citation or table of
# contents fails, and the pages carry real outputs.  Then the built pages are scanned for anything
# loaded from another host, and opened in headless Chromium (tools/browser_check.py: math typeset,
# no raw pipe table, no traceback, images load, nothing wider than the column, no build-machine
# path, no request to another host; screenshots in _build/screenshots).  Last, `make paper-dry`
# (about 2 minutes on 2 cores) and the Colab-style check of one chapter that trains (03) and one
# that reads results files (06).
test: $(STAMP) $(MATHJAX)
	bash tools/need_chromium.sh
	GLANCE_PRESET=smoke $(BIN)/python -m pytest tests -q -n auto
	GLANCE_PRESET=smoke OMP_NUM_THREADS=1 $(BIN)/python -m pytest --nbval-lax notebooks/ -q -p no:cacheprovider -n auto --dist loadfile
	mkdir -p _build
	sed -e 's/execute_notebooks: cache/execute_notebooks: force/' -e 's|authoryear_bib: book/_ext|authoryear_bib: ../book/_ext|' _config.yml > _build/_config_check.yml
	GLANCE_PRESET=smoke $(BIN)/jupyter-book build . --config _build/_config_check.yml --builder html -W -n --keep-going --path-output _build/smoke
	$(BIN)/python tools/check_offline_html.py _build/smoke/_build/html
	$(BIN)/python tools/browser_check.py _build/smoke/_build/html --screenshots _build/screenshots
	$(MAKE) paper-dry
	$(BIN)/python tools/colab_check.py notebooks/03_heads_and_training.ipynb notebooks/06_mvtec_ad.ipynb

unit: $(STAMP) $(MATHJAX)
	GLANCE_PRESET=smoke $(BIN)/python -m pytest tests -q -n auto

# Regenerate the committed results files the reproduction chapters show (long; CPU or GPU).
results: $(STAMP)
	$(BIN)/glance-lite reproduce --out glance_lite/results --redo

# The paper preset's full-size path (256 px, batch 64, the paper's widths) for a few steps per stage,
# then evaluation, on the default device (GLANCE_DEVICE / auto); prints seconds per step and peak memory.
paper-dry: $(STAMP)
	mkdir -p _build/paper-dry
	$(BIN)/python -m glance_lite.experiments.paper_dry --work _build/paper-dry --out _build/paper-dry/report.json

# Every chapter the way Colab runs it: the wheel (not editable) in a fresh venv, each notebook alone
# in an empty folder, smoke preset (tools/colab_check.py).  `make test` runs two chapters of it.
colab-check: $(STAMP)
	$(BIN)/python tools/colab_check.py

# The exercises (tools/exercises.py): the student edition without solutions, and grading of a folder
# of completed notebooks (`make grade SUBMISSIONS=folder` writes grades.csv, one row per student and exercise).
student: $(STAMP)
	$(BIN)/python tools/exercises.py student --out _build/student

grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || (echo "make grade SUBMISSIONS=folder-of-completed-notebooks" >&2; exit 1)
	$(BIN)/python tools/exercises.py grade "$(SUBMISSIONS)" --out grades.csv

bench: $(STAMP)
	$(BIN)/python -m glance_lite.experiments.bench

clean-book:
	rm -rf _build

clean: clean-book
	rm -rf $(VENV) *.egg-info _vendor
