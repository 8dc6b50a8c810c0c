# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test venv system-deps clean

# The virtual environment is rebuilt whenever a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	bash scripts/system-deps.sh

run: $(STAMP)
	$(PY) main.py

test: system-deps $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
