# The two set-up commands: `make demo` (the embedded demo) and `make test` (the test suite).
# Each creates or reuses .venv and installs what it needs (idempotent).
PY := .venv/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup demo test clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) tools/run_demo.py

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf output datasets/tid_shapes
