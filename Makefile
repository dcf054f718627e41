# The two commands a newcomer needs:  `make demo`  and  `make test`.
# Both create the environment in .venv/ on first use; re-running set-up is a no-op.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.qffs-installed
FMNIST  := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint data browser clean-venv

setup: $(STAMP) data browser

# torch/torchvision are pinned to the builds that these machines install from local files.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (no network downloads needed).
data:
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
	     && echo "installed Fashion-MNIST into /usr/share/datasets/fashion-mnist"; \
	  else echo "note: Fashion-MNIST missing; run: sudo apt-get install dataset-fashion-mnist"; fi; \
	fi

# Debian's chromium renders report pages headless in the report test (skipped, with the reason, without it).
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
	     && echo "installed chromium (headless rendering of report pages in the tests)" \
	     || echo "note: chromium could not be installed; the report-page rendering test will be skipped"; \
	  else echo "note: chromium missing, the report-page rendering test will be skipped; run: sudo apt-get install chromium"; fi; \
	fi

demo: setup
	$(VENV)/bin/qffs demo

# The linter and the public API's type check run first: a red lint is a red test.
lint: setup
	$(VENV)/bin/ruff check qffs cli tests benchmarks
	$(VENV)/bin/mypy

test: setup lint
	$(VPY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(VPY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
