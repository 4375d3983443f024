# hm3 — the two commands a new user needs: `make demo` and `make test`.
# Everything runs inside .venv, created on first use. torch is installed first, from TORCH_SPEC, so that no
# dependency pulls a different build (a GPU user: make install TORCH_SPEC="torch==2.13.0 --index-url ...").

PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP      := $(VENV)/.hm3-installed
OFFLINE    := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install test demo lint bench clean-zoo help

help:
	@echo "make demo    build the toy zoo if missing and run the main job on it"
	@echo "make test    run the test suite (creates .venv first if needed)"
	@echo "make install create .venv: $(TORCH_SPEC) first, then hm3 with all extras (idempotent)"
	@echo "make lint    ruff"
	@echo "make bench   the benchmarks; Markdown tables land in benchmarks/results/"

# The stamp makes a second `make install` instant; editing setup.cfg or pyproject.toml reinstalls.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[all]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check hm3 cli tests benchmarks
	$(BIN)/ruff format --check hm3 cli tests benchmarks

# The main job on the toy zoo: build the language zoo if missing, search (or finish an interrupted search;
# a finished run is only re-summarised), print the front and write its plot.
DEMO_RUN ?= runs/toy-lm
demo: $(STAMP)
	$(OFFLINE) $(BIN)/hm3 zoo build --kind lm --size small
	@# resume an interrupted demo; start afresh only when what it was scored with is gone (the zoo was rebuilt,
	@# or an older hm3 wrote its log): `hm3 merge --resume` exits 3 for that refusal alone; any other failure
	@# (exit 2...) stops here
	@if [ -f $(DEMO_RUN)/recipe.yaml ]; then \
		$(OFFLINE) $(BIN)/hm3 merge --resume $(DEMO_RUN) || { status=$$?; [ $$status -eq 3 ] || exit $$status; \
			echo "make demo: $(DEMO_RUN) cannot be resumed (its models or log format changed); starting it afresh"; \
			$(OFFLINE) $(BIN)/hm3 merge --recipe recipes/toy-lm.yaml --out $(DEMO_RUN) --force; }; \
	else \
		$(OFFLINE) $(BIN)/hm3 merge --recipe recipes/toy-lm.yaml --out $(DEMO_RUN); \
	fi
	$(OFFLINE) $(BIN)/hm3 pareto $(DEMO_RUN) --plot $(DEMO_RUN)/front.png

# Each benchmark script writes its own Markdown table under benchmarks/results/.
bench: $(STAMP)
	@for script in benchmarks/[a-z]*.py; do \
		echo "== $$script"; $(OFFLINE) $(BIN)/python $$script || exit 1; \
	done

clean-zoo:
	rm -rf zoo
