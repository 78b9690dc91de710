# Set-up lives here so that a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.vaekit-base
DEV := $(VENV)/.vaekit-dev

.PHONY: demo test lint bench clean

# A fresh set-up takes about 2 minutes, nearly all of it pip fetching and installing torch: each
# step says what it does, and pip shows torch's download (the other installs stay quiet).
$(BASE): pyproject.toml
	@echo "[1/3] creating $(VENV) (if missing)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[2/3] installing torch 2.13.0, the CPU wheel (most of the set-up's 2 minutes; pip shows the download)"
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on torch==2.13.0
	@echo "[3/3] installing vaekit and its app extras (plotly, jinja2, starlette, uvicorn)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[app]'
	touch $(BASE)

$(DEV): $(BASE)
	@echo "installing the dev extras (pytest, ruff, scipy, pandas, pyarrow, tensorboard, mlflow, playwright)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The browser tests drive Debian's chromium through Playwright (whose own browser download
	# is not reachable everywhere). Installed when missing and possible (root, apt-get);
	# otherwise those tests are skipped, not failed.
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium not installed (needs root and apt-get): the browser tests will be skipped"
	touch $(DEV)

demo: $(BASE)
	@echo "training the demo VAE on scikit-learn's digits (about 20 s)"
	$(BIN)/vaekit train --data digits --binarize dynamic --latent-dim 2 --epochs 100 \
		--out runs/demo --overwrite

test: $(DEV)
	$(BIN)/python -m pytest -q

lint: $(DEV)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache
