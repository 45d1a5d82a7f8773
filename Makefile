# Two commands do all the set-up on a fresh machine (see README):
#   make demo   -- embedded etcd + the example suite, paused and resumed live
#   make test   -- the whole test suite against a real etcd and OTLP endpoint
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test compat bench lint clean docs-images

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python examples/demo.py

# docker-compose (Debian's 1.29) only validates docker-compose.yml offline;
# best effort: the test that needs it says how to install it when absent.
test: $(BIN)/.installed
	@command -v docker-compose >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq docker-compose >/dev/null 2>&1; }; } || true
	$(BIN)/pytest

# The compatibility matrix (noxfile.py), which CI runs after `make test`: the core tests
# under pytest 8.0 and 8.4 (`make test` itself runs the latest 9.x) and
# etcd 3.4 (Debian's etcd-server, installed with apt-get as root; skipped where not).
compat: $(BIN)/.installed
	$(BIN)/pip install --quiet "nox>=2024.3"
	$(BIN)/nox

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/pause_latency.py

# The pictures in docs/images/ (docs/tracing.md, README): the example suite with one failing
# test, sent over OTLP to Arize Phoenix (installed once from PyPI into .venv-docs, ~850 MB)
# and screenshotted with headless Chromium (Debian's chromium, apt-get when run as root),
# plus `taskctl trace` output rendered with rich. About 30 s once both are installed.
docs-images: $(BIN)/.installed
	$(BIN)/python scripts/docs_images.py

lint: $(BIN)/.installed
	$(BIN)/pip install --quiet ruff mypy
	$(BIN)/ruff check src tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-docs logs .taskctl .pytest_cache .nox
