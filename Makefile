# The two commands of the README are `make book` and `make test`; each bootstraps .venv once.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCALE ?= smoke
DEVICE ?= auto
# the installed stack takes 6.4 GB here (torch's CUDA build); pip needs room to unpack it as well
VENV_MIN_FREE_GB ?= 8
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)
export FER_NB_PLAIN_PROGRESS ?= 1
export PYTHONHASHSEED := 0

.PHONY: venv book test test-fast lab bench gpu-check device-wheels record clean

venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	@free_kb=$$(df -Pk . | awk 'NR==2 {print $$4}'); if ! $(PY) -c "import torch" 2>/dev/null && [ "$$free_kb" -lt $$(( $(VENV_MIN_FREE_GB) * 1048576 )) ]; then \
	  echo "make: setting up $(VENV) needs about $(VENV_MIN_FREE_GB) GB free (the pinned stack is 6.4 GB, torch's CUDA build)," \
	       "but only $$(( free_kb / 1048576 )) GB is free on $$(df -P . | awk 'NR==2 {print $$6}'): free some space" \
	       "(old clones, virtual environments, /tmp) and run make again" >&2; exit 1; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned stack into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install --disable-pip-version-check -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import torch, torchvision, papermill, jupytext, jupyter_book, fer_nb" || (echo "install failed" >&2; exit 1)
	@$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

## make book [SCALE=smoke|small|gpu|paper] [DEVICE=auto|cpu|cuda]: execute every notebook, build HTML
## (one CPU thread per kernel unless OMP_NUM_THREADS is set: with another process on the CPU, torch's
## two-thread OpenMP regions made the CAF chapter 16x slower here, 354 s instead of 21.5 s)
book: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m fer_nb.book --scale $(SCALE) --device $(DEVICE)

## make test: unit tests + papermill smoke run of every notebook
test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist worksteal --durations=15 -q

## make test-fast: unit tests only
test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q -m "not notebook"

## make lab: JupyterLab on the project; the MyST notebooks open as notebooks (jupytext)
lab: venv
	JUPYTERLAB_SETTINGS_DIR=$(CURDIR)/.jupyter/lab/user-settings $(VENV)/bin/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root,)

## make bench: throughput benchmarks (writes benchmarks/results/<device>.json)
bench: venv
	$(PY) -m benchmarks.run --device $(DEVICE)

## make gpu-check: on a machine with a CUDA GPU, every notebook at smoke on CUDA, make bench, then every notebook at gpu scale
gpu-check: venv
	$(PY) -m fer_nb.gpu_check --scales smoke gpu

## make device-wheels [DEVICE_PYTHON=3.12]: for a GPU machine without internet that has its own torch, the wheels
## of benchmarks/device_wheels.txt into .whl/ (replacing the wheels there); copy .whl/ there and run `bash benchmarks/gpu_session.sh`
DEVICE_PYTHON ?= 3.12
device-wheels: venv
	@rm -f .whl/*.whl
	@$(PY) -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: --python-version $(DEVICE_PYTHON) \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
	  -d .whl -r benchmarks/device_wheels.txt 2>&1 | grep -v "^WARNING: Location" || true
	@want=$$(grep -c '^[^#]' benchmarks/device_wheels.txt); got=$$(ls .whl/*.whl 2>/dev/null | wc -l); \
	  if [ "$$got" -lt "$$want" ]; then echo "make device-wheels: $$got of $$want wheels in .whl/ (pip's message above says why)" >&2; exit 1; fi; \
	  echo "$$got wheels in .whl/ ($$(du -sh .whl | cut -f1)): copy .whl/ to the GPU machine and run 'bash benchmarks/gpu_session.sh' there"

## make record [DATA_ROOT=...] [JOBS=2] [ARGS=--all|--check|--only NAME]: re-run the recorded runs under
## results/ that the code no longer matches (a worktree of HEAD, one CPU thread per job, longest first)
record: venv
	$(PY) -m fer_nb.record --jobs $${JOBS:-2} $(if $(DATA_ROOT),--data-root $(DATA_ROOT),) $(ARGS)

clean:
	rm -rf book/_build book/_generated runs
