# Deep Learning in the Cloud: the two commands of the README are `make book` and `make test`.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := book

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-from-lock
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv book labs check test benchmark env lock clean lab3-live edition grade model

## venv: the one environment, made from requirements.lock (Python 3.11)
venv: $(STAMP)
$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed: '$(PYTHON)' was not found (set PYTHON=/path/to/python3.11)." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "$(PYTHON) is not Python 3.11." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

## book: build the book strictly (zero warnings), creating the environment if missing
book: venv
	$(BIN)/jupyter-book build . -W -n --keep-going

## labs: render the lab sources (solutions/<lab>/<lab>.py) into build/source/, then let
## nbgrader write the student versions in labs/ (and record the labs in the instructor's gradebook)
labs: venv
	$(BIN)/python -m dlcloud_course labs

## check: the quick tier (under 2 minutes, no Docker, no Java): ruff, the lab format, labs/ in sync,
## the static lab checks and the unit tests of both packages
check: venv
	$(BIN)/ruff check src tests benchmarks solutions
	$(BIN)/python -m pytest -m "not slow and not docker and not java and not cluster and not gpu and not browser" -q

## model: retrain the course's shipped payout model (src/dlcloud/models/pays_out/), then commit it
model: venv
	$(BIN)/python -m dlcloud_course.model

## test: build the book, then run every test (Docker tests need a Docker Engine)
test: book
	$(BIN)/python -m pytest

## lab3-live: lab 3's live section on the cluster KUBECONFIG names (minikube, kind, GKE)
lab3-live: venv
	$(BIN)/python -m dlcloud.kube check
	$(BIN)/python -m pytest -m cluster tests/test_lab3_live.py -v

## edition: write the student edition (what students and the public get) to EDITION_DIR
EDITION_DIR ?= build/student-edition
edition: venv
	$(BIN)/python -m dlcloud_course.edition build $(EDITION_DIR) --force

## grade: grade every collected submission of LAB in its own sandbox (docs/grading.md), e.g. make grade LAB=lab7-grpc-serving WORKERS=2
grade: venv
	@test -n "$(LAB)" || { echo "Name the lab: make grade LAB=lab1-bpaas" >&2; exit 1; }
	$(BIN)/python -m dlcloud_course.grader grade $(LAB) --workers $(or $(WORKERS),1)

## benchmark: run each lab's solution and print wall time and peak memory against the budget
benchmark: venv
	$(BIN)/python benchmarks/labs.py

## env: derive environment.yml and binder/ from requirements.lock
env:
	PYTHONPATH=src $(PYTHON) -m dlcloud_course.environment

## lock: re-resolve requirements.in into requirements.lock, then derive the rest
lock:
	uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header requirements.in -o requirements.lock
	$(MAKE) env

clean:
	rm -rf _build build .nbgrader
