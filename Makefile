# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test down lint browser

# uv installs what pip would (same versions), about 5x faster: torch's 5 GB in 15 s
# instead of a minute. uv does not read pip's configuration, so the package indexes and
# wheel folders configured for pip on this host are passed on to it. It compiles the
# bytecode at install, on both cores, as pip does: otherwise the first `make demo` pays
# for it in the server and the flow.
PIP_INDEXES := $(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null)
PIP_LINKS   := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV := UV_EXTRA_INDEX_URL="$(PIP_INDEXES)" UV_FIND_LINKS="$(PIP_LINKS)" \
	UV_INDEX_STRATEGY=unsafe-best-match UV_COMPILE_BYTECODE=1 $(VENV)/bin/uv pip install -q --python $(PY)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv
	# torch first, pinned: these are the wheels available offline on the build hosts
	$(UV) torch==2.14.1 torchvision==0.29.1
	$(UV) -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# headless Chromium for the report's browser test (Debian's package)
browser:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

demo: install
	$(PY) -m scripts.stack up
	$(PY) -m scripts.stack run-demo

down:
	$(PY) -m scripts.stack down

# lint-imports first: a crossed layer (pyproject.toml, [tool.importlinter]) fails the run
test: install browser
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports
