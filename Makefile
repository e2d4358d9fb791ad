# The README's two commands; each works on a fresh clone and builds .venv from
# pyproject.toml on first use (again whenever pyproject.toml changes).
#   make test         the tests CI runs (.ci/run): everything but the slow ones
#   make quickstart   the main job: a federation on the bundled digits (experiments/quickstart.toml)
# Extra arguments: make test ARGS="tests/test_report.py -x", make quickstart ARGS="--engine inline".
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test quickstart venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	@rc=0; $(VENV)/bin/pytest -m "not slow" $(ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; fi; exit $$rc

quickstart: $(STAMP)
	$(VENV)/bin/fedsec run experiments/quickstart.toml $(ARGS)
