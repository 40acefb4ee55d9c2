# dicom-node: `make demo` runs the whole path on this machine, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,train,dev

.PHONY: install system-deps viewer demo test test-unit test-integration lint bench train-xray train-lungseg train-xray-severity train-xray-compact ct-pictures clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

system-deps:
	./scripts/install-system-deps.sh

# OHIF's prebuilt app and playwright-core from npm into ~/.cache/dicom-node/viewer (or
# $$DICOM_NODE_VIEWER_CACHE); the browser test and `OHIF=1 make demo` also fetch them on first use.
viewer: system-deps
	./scripts/ohif/install.sh

# OHIF=1 also serves OHIF on loopback (npm needed).
demo: install system-deps
	$(PY) -m tests.support.demo

test: install system-deps
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install system-deps
	$(PY) -m pytest tests/integration

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: install system-deps
	$(PY) bench/bench_scp.py
	$(PY) bench/bench_turnaround.py
	$(PY) bench/bench_xray.py
	$(PY) bench/bench_ct.py
	$(PY) bench/bench_scaleout.py

# The commands that produced the shipped models, on 2 CPU cores. The X-ray classifier sees the
# lung fields found by the segmentation model, so train-xray runs train-lungseg's result.
train-lungseg: install
	$(PY) -m training.train_lungseg --out models/lung_segmentation/1.0.0

train-xray: install
	$(PY) -m training.train_xray --out models/xray_classifier/2.0.0

# The severity head reads the shipped classifier's features: it runs after train-xray.
train-xray-severity: install
	$(PY) -m training.train_xray_severity --out models/xray_severity/1.0.0

# The previous default (compact CNN on the whole image), kept for comparison.
train-xray-compact: install
	$(PY) -m training.train_xray_compact --out models/xray_classifier/1.0.0

ct-pictures: install
	$(PY) scripts/ct_pictures.py ../shared/data/ct_volumes/Lung-PET-CT-Dx_A0001_5mm_kernelB docs/ct-a0001

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
