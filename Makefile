# quasr: the few commands everyone runs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip

.PHONY: setup lock demo test bench cuda-check arm-check clean

# Every install takes the versions CI tested (constraints.txt); pyproject.toml declares the ranges
# quasr supports. Upgrading a dependency is a deliberate commit: `make lock` in a venv that passes.
CONSTRAINTS := -c constraints.txt

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q $(CONSTRAINTS) --upgrade pip

# torch is installed first (pinned CPU build), then the package without build isolation so the
# extension builds against that torch instead of pulling a CUDA build into an isolated env.
setup: $(BIN)/python
	$(PIP) install -q $(CONSTRAINTS) torch==2.13.0 setuptools wheel ninja
	$(PIP) install -q $(CONSTRAINTS) --no-build-isolation -e '.[models,test]'

# Rewrite constraints.txt from the current venv (after `make test` passes on an upgrade).
lock:
	{ echo "# What CI and \`make setup\` install: written by \`make lock\` from a venv that passed \`make test\`."; \
	  $(PIP) freeze --all --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > constraints.txt

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/quasr demo --bits 4 --group-size 128

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/gemm.py

# Compile-check the CUDA backend without a GPU: every csrc/cuda/*.cu for sm_80/86/89/90 with ptxas -v
# (registers, spills, shared memory per kernel to bench/results/cuda_check.md; fails on a spill) and
# the torch binding's syntax against this venv's torch headers.
cuda-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) bench/cuda_check.py

# The CPU kernels' portable path on aarch64: cross-compile (installs g++-aarch64-linux-gnu and
# qemu-user with apt when missing) and run csrc/cpu/tests/scalar_check.cpp natively and under qemu.
arm-check:
	bash .ci/arm_check.sh

clean:
	rm -rf build *.egg-info python/quasr/_C*.so
