# Two entry points do everything on a fresh machine:
#   make repro   create .venv from requirements.txt if needed, then `dvc repro` (default params.yaml)
#   make test    create .venv if needed, then ruff check and the whole test suite
#                (quick loop: .venv/bin/python -m pytest -q -m "not slow")
# and for studies:
#   make sweep DATASET=sinusoid   the sigma x placement x seed sweep as DVC experiments, then
#                                 reports/sweep_<dataset>.md (after `make repro`)
#   make study STUDY=nme_omniglot  run (or resume) studies/<name>.yaml, then reports/<name>.md
#   make remote URL=...           the DVC remote that `dvc push`/`dvc pull` and `dvc exp push`/
#                                 `dvc exp pull` use (a folder, s3://, ssh://, ...); commit .dvc/config
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)

# A local folder of Omniglot archives: the zips the archive folder lacks are copied there before
# the pipeline runs; fetch@omniglot tells the sets apart by MD5 and downloads the official
# archives of `fetch.omniglot` that are still missing.
OMNIGLOT_ARCHIVES ?= ../shared/data/omniglot
OMNIGLOT_FOLDER := data/downloads/omniglot

DATASET ?= sinusoid
# Extra options of `noisymaml sweep run`, e.g. SWEEP_ARGS='--sigmas 0,0.01,0.1 --seeds 0 --no-feedback'
SWEEP_ARGS ?=
STUDY ?= nme_omniglot
# Extra options of `noisymaml study run`, e.g. STUDY_ARGS="--only '*-s0-*'"
STUDY_ARGS ?=

.PHONY: repro test archives sweep study remote

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

archives:
	@for zip in $(OMNIGLOT_ARCHIVES)/*.zip; do \
		if [ -f "$$zip" ] && [ ! -e "$(OMNIGLOT_FOLDER)/$$(basename "$$zip")" ]; then \
			mkdir -p $(OMNIGLOT_FOLDER) && cp "$$zip" $(OMNIGLOT_FOLDER)/ && \
			echo "copied $$zip into $(OMNIGLOT_FOLDER)" || exit 1; fi; \
	done

repro: $(STAMP) archives
	dvc repro

test: $(STAMP)
	ruff check src stages tests benchmarks
	python -m pytest -q

sweep: repro
	noisymaml sweep run --dataset $(DATASET) $(SWEEP_ARGS)

study: repro
	noisymaml study run studies/$(STUDY).yaml $(STUDY_ARGS)

remote: $(STAMP)
	@test -n "$(URL)" || { echo "usage: make remote URL=<folder or s3://, ssh://, ... URL>" >&2; exit 2; }
	dvc remote add --default --force storage "$(URL)"
	@echo "DVC remote 'storage' -> $(URL): commit .dvc/config, then dvc push (README: Sharing)"
