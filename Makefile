# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Each (re)creates the virtual environment when pyproject.toml or this file changed, else reuses it.
PYTHON   ?= python3
VENV     ?= .venv
TORCH    ?= 2.13.0
TORCHREC ?= 1.8.0
# cpu: fbgemm-gpu-cpu. A GPU cluster uses EXTRAS=gpu,dev,text (CUDA fbgemm-gpu).
EXTRAS   ?= cpu,dev,text
DEMO_OUT ?= demo_out

PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@echo "== installing torch $(TORCH), TorchRec $(TORCHREC) and the project into $(VENV) (a few minutes, once; pip is quiet)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: anything unpinned could pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==$(TORCH)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	# torchrec's wheel requires the CUDA fbgemm-gpu; its real imports come from pyproject.toml.
	$(PY) -m pip install -q --no-deps torchrec==$(TORCHREC)
	$(PY) -c "import torch, torchrec, fbgemm_gpu, pyarrow; print('env ok: torch', torch.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	bash launch/demo.sh $(PY) $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The suite on every core (pytest-xdist, at most 4 workers): the slow tests wait on subprocesses and
# servers as much as they compute. `pytest tests/test_x.py` runs one file in one process.
test: lint
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal

clean:
	rm -rf $(VENV) $(DEMO_OUT)
