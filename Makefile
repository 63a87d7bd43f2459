# Quick start: `make demo` trains the default example on built-in data; `make test` runs the suite.
# Both install what is missing into the current Python environment (use a virtualenv).

PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_CPU ?= 2.13.0
DEMO_SPEC ?= specs/hard.yaml
DEMO_ARGS ?= --force

.PHONY: torch install dev demo test fuzz lint bench gallery schema clean

# A CPU build of torch when none is installed: a plain `pip install torch` pulls a multi-GB CUDA build.
torch:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_CPU)" \
	  || $(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu

# the plots extra too: `make demo` ends by drawing loss.png and weights.png
install: torch
	@$(PYTHON) -c "import mtlc, rich, graphviz, matplotlib" 2>/dev/null || $(PIP) install -q -e ".[plots]"

dev: torch
	@$(PIP) install -q -e ".[dev]"

demo: install
	$(PYTHON) -m mtlc.cli train $(DEMO_SPEC) $(DEMO_ARGS)

test: dev
	$(PYTHON) -m pytest -q

# The property-based spec test at length: FUZZ_EXAMPLES fresh mutations of every spec in
# specs/ (the suite runs 30 per spec, derandomized). Prints how each example ended.
FUZZ_EXAMPLES ?= 600
fuzz: dev
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTHON) -m pytest -q tests/test_spec_fuzz.py \
	  -p no:cacheprovider --hypothesis-show-statistics

lint: dev
	$(PYTHON) -m ruff check mtlc tests benchmarks
	$(PYTHON) -m ruff format --check mtlc tests benchmarks

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PYTHON) $$b || exit 1; done

gallery: install
	@for s in specs/*.yaml; do $(PYTHON) -m mtlc.cli viz $$s -o docs/gallery/$$(basename $$s .yaml).png || exit 1; done

# the packaged JSON Schema that `mtlc schema` prints, regenerated from mtlc/spec/schema.py
# and the option models of the sharing points registered in mtlc/registry.py
schema: install
	$(PYTHON) -c "from mtlc.commands import SCHEMA_FILE, schema_text; SCHEMA_FILE.write_text(schema_text())"

clean:
	rm -rf runs build *.egg-info .pytest_cache .ruff_cache
