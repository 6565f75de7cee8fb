# StabilityLab: `make book` renders the book, `make test` runs every test, `make figures` re-runs the chapters.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What pip installs as torch before the project. CI pins the build that lies on its machine's disk;
# a machine without a GPU can take the small CPU build instead (see README.md).
TORCH ?= torch torchvision
SCALE ?= small
CHAPTERS ?=

.PHONY: all book test figures check clean browser

all: test

$(VENV)/.installed: pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH)
	$(PY) -m pip install -r requirements.txt
	touch $@

book: $(VENV)/.installed
	$(VENV)/bin/jupyter-book build .
	@echo "The book: $(CURDIR)/_build/html/index.html"

test: $(VENV)/.installed browser
	$(PY) -m pytest tests book --nbval-lax

# The page test opens the rendered book in Debian's Chromium (never a downloaded browser).
browser:
	@if [ -z "$$STABILITYLAB_SKIP_BROWSER" ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then \
	  echo "Installing Debian's chromium and chromium-driver for the page test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	  echo "Could not install chromium: the page test will fail (see README.md)"; \
	fi

figures: $(VENV)/.installed
	$(PY) -m stabilitylab.book run $(CHAPTERS) --scale $(SCALE)
	$(VENV)/bin/jupyter-book build .

check: $(VENV)/.installed
	$(PY) -m stabilitylab.book check

clean:
	rm -rf _build
