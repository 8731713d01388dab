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

# The audit's main job on the embedded default: a phantom mammography set, a deliberately memorising generator
# (the positive control) trained on it, its samples, and the replica audit that must catch them.
demo: $(VENV)/.installed
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/audit data phantom --kind mammo --patients 200 --out $(DEMO_OUT)/phantom-mammo --seed 0
	$(VENV)/bin/audit data inspect --data phantom-mammo --data-root $(DEMO_OUT)/phantom-mammo --out $(DEMO_OUT)/inspect-mammo
	$(VENV)/bin/audit data export --data phantom-mammo --data-root $(DEMO_OUT)/phantom-mammo --split train --out $(DEMO_OUT)/real-train
	$(VENV)/bin/audit data export --data phantom-mammo --data-root $(DEMO_OUT)/phantom-mammo --split test --out $(DEMO_OUT)/real-test
	$(VENV)/bin/audit generator train --data phantom-mammo --data-root $(DEMO_OUT)/phantom-mammo --config memorize-quick --out $(DEMO_OUT)/model-memorize
	$(VENV)/bin/audit generate --model $(DEMO_OUT)/model-memorize --n 64 --out $(DEMO_OUT)/synthetic --seed 0
	$(VENV)/bin/audit replicas --train $(DEMO_OUT)/real-train --holdout $(DEMO_OUT)/real-test --synthetic $(DEMO_OUT)/synthetic --out $(DEMO_OUT)/replicas
	@echo "demo done: $(DEMO_OUT)/inspect-mammo/contact_sheet.png, $(DEMO_OUT)/replicas/pairs.png, $(DEMO_OUT)/replicas/replicas.json"

clean:
	rm -rf $(DEMO_OUT) .audit-cache .pytest_cache
