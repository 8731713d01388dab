# Two entry points that work on a fresh machine with only Python and the package registries:
#   make demo   build the phantom dataset and run the audit's main job on it
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out
export SYNTH_AUDIT_CACHE ?= $(CURDIR)/.audit-cache

.PHONY: demo test install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# the stamp files make re-runs skip the install when pyproject.toml did not change
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev,distributed]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# the report's browser test drives Debian's Chromium (playwright's own browser download is not used); as root on a
# Debian-like machine without it, install it first — elsewhere the test is skipped with the reason
test: $(VENV)/.installed-dev
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null \
		|| echo "chromium could not be installed: the browser test will be skipped"; fi
	$(PY) -m pytest -n 2 --dist loadfile -q

# The product on the embedded default (audit demo): phantom mammography and brain sets, a normal and a memorising 2D
# generator and a tiny 3D one (trained, or reused from $(SYNTH_AUDIT_CACHE)/demo), each audited with `audit run`,
# the two 2D reports compared.
demo: $(VENV)/.installed
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/audit demo --out $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) .audit-cache .pytest_cache
