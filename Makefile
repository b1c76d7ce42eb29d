# The two commands a new user types: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-compat bench lint clean venv system

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cas demo --precompile

# System packages for the Redis-door benchmark and the web-view browser test
# (redis-server, chromium): installed with apt-get when missing and root, else reported.
system:
	bash tests/setup_system.sh

# The suite starts hundreds of cas processes, servers and torch programs: cas's own modules
# are byte-compiled once here (as pip does for installed packages), so that each process
# reads them compiled even where PYTHONDONTWRITEBYTECODE keeps Python from writing them.
test: $(STAMP) system
	$(PY) -m compileall -q cas cli tests bench >/dev/null
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=15 -rfE tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check cas cli tests bench
	$(VENV)/bin/mypy cas cli

# The torch tests against a second torch release (docs/compat.md): a venv of its
# own, pinned by constraints-compat.txt.
COMPAT_VENV  ?= .venv-compat
COMPAT_PY    := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed

$(COMPAT_STAMP): pyproject.toml constraints-compat.txt
	test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install --quiet --upgrade pip
	$(COMPAT_PY) -m pip install --quiet -c constraints-compat.txt -e '.[dev]'
	touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP)
	$(COMPAT_PY) -c 'from cas.torch import _compat; r = _compat.report(); print("torch", r["torch"]); print("\n".join(_compat.report_lines(r)) or "probe: every hook cas uses is there")'
	$(COMPAT_PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=10 tests/torch

bench: $(STAMP) system
	$(PY) -m pytest -q bench --benchmark-only --benchmark-columns=min,median,mean,max,rounds

lint: $(STAMP)
	$(VENV)/bin/ruff check cas cli tests bench
	$(VENV)/bin/mypy cas cli
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build *.egg-info .pytest_cache .benchmarks
