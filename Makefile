# `make test` and `make demo` work on a fresh clone: the first target that needs Python
# creates .venv and installs edgedd with its host and dev extras into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgedd-installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[host,dev]'
	touch $(STAMP)

# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
test: $(STAMP)
	@$(PY) -m pytest tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The main job on the embedded default: distill MNIST (random-init tiny ViT until the shipped
# self-supervised backbones of issue 6 exist; see README).
demo: $(STAMP)
	$(VENV)/bin/edgedd distill embedded:mnist --backbone test_vit --weights random \
		--crop-res 32 --syn-res 32 --ipc 1 --iterations 300 --out runs/demo --overwrite

bench: $(STAMP)
	$(PY) bench/stage1_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info runs
