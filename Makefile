# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test venv system-deps demo-video react-example clean

# OpenCV's pedestrian sample (from Debian's opencv-doc), checked by sha256; git ignores media/.
DEMO_VIDEO := media/vtest.avi

# The virtual environment is rebuilt whenever a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	bash scripts/system-deps.sh

$(DEMO_VIDEO):
	bash scripts/fetch-vtest.sh

demo-video: $(DEMO_VIDEO)

# Plays the pedestrian sample when it is there (make demo-video), else the built-in synthetic source.
# A VIDEO_FILE_PATH from the environment or .env wins.
run: $(STAMP)
	@if [ -z "$${VIDEO_FILE_PATH+x}" ] && [ -f $(DEMO_VIDEO) ] && ! grep -qs '^VIDEO_FILE_PATH=' .env; then \
		export VIDEO_FILE_PATH=vtest.avi; fi; exec $(PY) main.py

# The React example is built on every test run so that it cannot rot.
REACT_DIST := examples/react/dist/index.html
$(REACT_DIST): examples/react/package.json examples/react/package-lock.json examples/react/index.html \
		examples/react/vite.config.js $(wildcard examples/react/src/*)
	cd examples/react && npm ci --no-audit --no-fund && npm run build

react-example: $(REACT_DIST)

test: system-deps $(STAMP) $(DEMO_VIDEO) $(REACT_DIST)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache examples/react/node_modules examples/react/dist
