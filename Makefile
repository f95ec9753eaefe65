# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install search bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch from the local wheel cache first (a plain `pip install torch` may pull a multi-GB CUDA build)
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)   ## continual-learning run of REP on the embedded offline default (digits, embedded ViTs)
	$(BIN)/rep-tune train

search: $(STAMP) ## hardware-aware search for a Jetson AGX Orin on the embedded default
	$(BIN)/rep-tune search --device profiles/jetson_orin.yaml

test: $(STAMP)   ## the test suite (GPU/Jetson/RAPL tests skip where the hardware is absent)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_runtime.py

clean:
	rm -rf $(VENV) runs .pytest_cache
