# Two commands set everything up on a fresh Debian machine with Python 3.11:
#   make test    install what is needed, lint (ruff), then run the tests
#   make serve   install what is needed, then serve the shipped models
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] && echo yes)
POCL_ICD := /etc/OpenCL/vendors/pocl.icd
FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: setup system-deps browser-deps test lint serve bench clean

setup: system-deps $(VENV)/.installed

# Debian's PoCL is ~3x faster than the PyPI wheel on these CPUs (LLVM 15, AVX-512);
# without root we fall back to the wheel (installed into the venv below).
system-deps:
ifeq ($(SUDO),yes)
	@if [ ! -e $(POCL_ICD) ] || [ ! -e $(FASHION) ]; then \
		echo "installing Debian packages: pocl-opencl-icd ocl-icd-libopencl1 dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			pocl-opencl-icd ocl-icd-libopencl1 dataset-fashion-mnist >/dev/null; \
	fi
endif

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@if [ ! -e $(POCL_ICD) ]; then echo "no system PoCL: installing the pocl-binary-distribution wheel"; \
		$(BIN)/pip install -q -e '.[pocl]'; fi
	touch $@

# The browser the demo page's and /docs's tests drive (tests/service/http/test_browser.py;
# it skips, saying why, where these are missing).
browser-deps:
ifeq ($(SUDO),yes)
	@if ! command -v chromedriver >/dev/null; then \
		echo "installing Debian packages: chromium chromium-driver"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; \
	fi
endif

test: lint browser-deps
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The shipped mixture first (the default of /v1/classify), its monolithic baseline
# beside it, at fp32 and int8; override with e.g. `make serve SERVE_MODELS=fashion-alexnet`.
SERVE_MODELS ?= fashion-moe,fashion-alexnet
SERVE_PRECISIONS ?= fp32,int8
serve: setup
	$(BIN)/moe-alexnet serve --models $(SERVE_MODELS) --precisions $(SERVE_PRECISIONS)

bench: setup
	$(BIN)/moe-alexnet bench --model alexnet --random-weights --precision fp32 --batch 1,8 --compare onnxruntime

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The image end to end: builds it with podman from a locally made Debian base, runs it on
# 127.0.0.1 and checks it (tests/deploy/test_container.py), then removes what it made. Prints
# "SKIPPED: ..." and succeeds where podman cannot start a container on this machine.
.PHONY: container-test
container-test: setup
	PYTHON=$(BIN)/python bash scripts/container_test.sh
