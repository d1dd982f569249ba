# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test down lint browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: these are the wheels available offline on the build hosts
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
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

test: install browser
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
