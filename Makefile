# Two entry points for a newcomer: `make serve` and `make test`. Each builds its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench clean

$(BIN)/blockdrop: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $@

serve: $(BIN)/blockdrop
	$(BIN)/blockdrop serve

# two workers: much of the suite waits on servers and timeouts, so two overlap well even on two cores
TEST_WORKERS ?= 2

test: $(BIN)/blockdrop
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(TEST_WORKERS)

bench: $(BIN)/blockdrop
	$(BIN)/blockdrop bench executor

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
