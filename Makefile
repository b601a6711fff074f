# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(INSTALLED)
	$(BIN)/sonocad data phantom demo-out/phantoms --per-class 4
	$(BIN)/sonocad data check demo-out/phantoms --json demo-out/check.json

# The web viewer's browser test drives Debian's headless Chromium; install it where we can.
test: $(INSTALLED)
	@if [ ! -x /usr/bin/chromedriver ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; fi
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) demo-out
