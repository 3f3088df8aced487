# yolo-slim: `make demo` (set-up + the whole pipeline on synthetic data), `make test`.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed

.PHONY: install test clean

install: $(STAMP)

# torch is pinned: on these machines 2.13.0 is the local CPU build; a bare `torch` would pull CUDA
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest tests

clean:
	rm -rf runs build *.egg-info .pytest_cache
