# dicom-node: `make demo` runs the whole path on this machine, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,train,dev

.PHONY: install lock system-deps viewer demo test test-unit test-integration lint bench train-xray train-lungseg train-xray-severity train-xray-compact ct-pictures clean

install: $(VENV)/.installed

# constraints.txt pins every package to the versions CI tested (`make lock` renews it).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

# Resolve the newest versions pyproject.toml allows in a scratch venv and pin them all.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[$(EXTRAS)]'
	( echo "# pip constraints: what make install and CI use. Renew with make lock (then make lint test)."; \
	  .lock-venv/bin/pip freeze --exclude-editable | LC_ALL=C sort ) > constraints.txt
	rm -rf .lock-venv

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
	$(PY) -m mypy --strict dicom_node training

bench: install system-deps
	$(PY) bench/bench_scp.py
	$(PY) bench/bench_turnaround.py
	$(PY) bench/bench_xray.py
	$(PY) bench/bench_ct.py
	$(PY) bench/bench_scaleout.py

# The commands that produced the shipped models, on 2 CPU cores; hyper-parameters in
# training/configs/<model>.toml (--config). The X-ray classifier sees the lung fields found by
# the segmentation model, so train-xray runs train-lungseg's result.
train-lungseg: install
	$(PY) -m training.train_lungseg --out models/lung_segmentation/1.0.0

train-xray: install
	$(PY) -m training.train_xray --out models/xray_classifier/2.0.0

# The severity head reads the shipped classifier's features: it runs after train-xray.
train-xray-severity: install
	$(PY) -m training.train_xray_severity --out models/xray_severity/1.0.0

# The previous default (compact CNN on the whole image), kept for comparison; it has its own
# trainer in training/legacy/ (see training/legacy/__init__.py for why it is kept).
train-xray-compact: install
	$(PY) -m training.legacy.train_xray_compact --out models/xray_classifier/1.0.0

ct-pictures: install
	$(PY) scripts/ct_pictures.py ../shared/data/ct_volumes/Lung-PET-CT-Dx_A0001_5mm_kernelB docs/ct-a0001

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
