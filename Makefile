# Two commands do all the set-up:  `make demo`  and  `make test`.
# A virtual environment is made in $(VENV). If the system python already imports torch (for
# example a CUDA build), the venv sees it through --system-site-packages and keeps it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,waymo,nuscenes,export
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test lint bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml tools/install_torch.py
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV); \
	fi
	$(PY) tools/install_torch.py
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/pointwin demo $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 -q $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(VENV)/bin/pointwin bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
