# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv and install from pyproject.toml alone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow test-all lint demo clean proto gpu-wheels gpu-check nginx

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The remote-dataset tests start Debian's nginx on 127.0.0.1 (tests/remote_servers.py): CI
# (a fresh Debian machine, root) gets it here; elsewhere those tests skip with the reason.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light) \
	  || echo "nginx not installed: the nginx tests will skip (apt-get install nginx-light)"; }

# `make test` is the development loop: the suite without the tests marked `slow` (the ones that
# start several torch processes or train for a minute: the demo at its defaults, two simulated
# nodes, preemption and resume under torchrun, crashing ranks, the opt-in model sweep).
# `make test-slow` runs those; `make test-all` runs both in one pytest. CI (.ci/run) runs
# `make test` and then `make test-slow`, so every test runs in CI. Timings: docs/BENCHMARKS.md.
# TEST_WORKERS=N runs N pytest workers (pytest-xdist; the tests that each start several torch
# processes share one of them, see tests/conftest.py). Worth it with more than 2 cores; on 2
# cores two workers measured no gain (docs/BENCHMARKS.md), so the default is one process.
TEST_WORKERS ?= 0
PYTEST := $(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup)
test: $(STAMP) nginx
	$(PYTEST) -m "not slow"

test-slow: $(STAMP) nginx
	$(PYTEST) -m slow

test-all: $(STAMP) nginx
	$(PYTEST)

lint: $(STAMP)
	$(BIN)/ruff check recordkit recordkit_train tools tests
	$(BIN)/ruff format --check recordkit recordkit_train tools tests

proto: $(STAMP)
	$(BIN)/python tools/gen_proto.py

demo: $(STAMP)
	$(BIN)/recordkit-train demo demo

clean:
	rm -rf $(VENV) build *.egg-info

# tools/gpu_check.py on a GPU machine without network (docs/BENCHMARKS.md, "How to measure a
# GPU machine"): its image has torch, torchvision, OpenCV, Pillow, click and tqdm, not crc32c,
# and maybe a protobuf older than example_pb2.py needs. `make gpu-wheels` puts those two
# (for the GPU machine's Python, GPU_PY) into .whl/, which the device command installs
# with `pip install --no-index --target`.
GPU_PY ?= 3.12
gpu-wheels:
	rm -rf .whl
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version $(GPU_PY) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl "crc32c>=2.4" "protobuf>=6.31.1"

gpu-check:
	PYTHONPATH=. $(PYTHON) tools/gpu_check.py --out gpu-check
