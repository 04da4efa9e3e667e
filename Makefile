# The two commands a new user runs: `make demo` and `make test`.
VENV ?= .venv

.PHONY: setup demo test
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/toolkit demo

test: setup
	$(VENV)/bin/python -m pytest -q
