# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install data search bench gpu-check clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch: without an NVIDIA driver, PyTorch's CPU build first (no CUDA libraries);
	# where that index is unreachable, and with a driver, the pinned build (from a local wheel cache
	# when there is one; a plain `pip install torch` may pull a newer multi-GB CUDA build)
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	    $(BIN)/pip install -q --retries 0 --timeout 10 --index-url https://download.pytorch.org/whl/cpu \
	        "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null \
	    || echo "PyTorch's CPU index is unreachable: installing the pinned torch build"; fi
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[test,all]"   # every extra (Ray, optuna-dashboard): CI covers them
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST (the default scenario): nothing to do when the IDX files are found (Debian's
# /usr/share/datasets/fashion-mnist, $$REP_TUNE_FASHION_MNIST, or an earlier download); else
# Debian's package dataset-fashion-mnist when apt-get is usable as root or with sudo; else
# torchvision's download (needs a network). Without either the error names both ways.
FMNIST_DEB := /usr/share/datasets/fashion-mnist
data: $(STAMP)   ## make the Fashion-MNIST IDX files available (idempotent)
	@if [ -f $(FMNIST_DEB)/t10k-labels-idx1-ubyte.gz ] && [ -f $(FMNIST_DEB)/train-images-idx3-ubyte.gz ]; then \
	  exit 0; fi; \
	if $(BIN)/python -m rep_tune.data.fashion_mnist --check >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ]; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist \
	    || { $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; } \
	    || echo "apt-get could not install dataset-fashion-mnist; trying torchvision's download"; \
	  fi; \
	fi; \
	$(BIN)/python -m rep_tune.data.fashion_mnist --download

demo: $(STAMP) data   ## continual-learning run of REP on the embedded default (Split Fashion-MNIST, embedded ViTs)
	$(BIN)/rep-tune train

search: $(STAMP) data ## hardware-aware search for a Jetson AGX Orin on the embedded default
	$(BIN)/rep-tune search --device profiles/jetson_orin.yaml

test: $(STAMP) data   ## the test suite (GPU/Jetson/RAPL tests skip where the hardware is absent)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadgroup --durations=15

bench: $(STAMP) data   ## side-by-side benchmarks (minutes to an hour on 2 cores; results in benchmarks/results/)
	$(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/bench_accuracy.py
	$(BIN)/python benchmarks/bench_cost_model.py --threads 1
	$(BIN)/python benchmarks/bench_search.py

gpu-check:   ## the prepared GPU check (on a CUDA machine: its python3, the project on PYTHONPATH)
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
