# The two set-up commands of the README. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=
# pytest-xdist workers for make test. Most tests wait (on browsers, processes,
# the network), so more workers than cores pays; each worker starts its own
# PostgreSQL and Redis. TEST_JOBS=0 runs in one process. tests/conftest.py
# orders and groups the tests (BUSY, WAITING). A test passes the first time or
# fails: nothing is rerun, because a rerun hides whether the product or the
# test was at fault. TEST_RERUNS=N reruns a failed test while diagnosing one;
# the end of the run names every rerun and every test over 30 s
# (tests/summary.py).
TEST_JOBS ?= 4
TEST_RERUNS ?= 0

.PHONY: run test lint typecheck bench clean

# setup.py builds the native hot loops (_*.c, _*.h in a package or a
# sub-package): a changed one is rebuilt.
$(BIN)/wadud: setup.cfg pyproject.toml setup.py $(wildcard */_*.c */_*.h */*/_*.c */*/_*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/wadud
	$(BIN)/wadud serve --host $(HOST) --port $(PORT)

test: $(BIN)/wadud
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder \
		--reruns $(TEST_RERUNS) --reruns-delay 2 -raR --durations=10 $(PYTEST_ARGS)

lint: $(BIN)/wadud
	$(BIN)/ruff check .
	$(BIN)/mypy wadud bin booking turn chat rtc sfu signalling privacy notify hooks recording sip wadud_client fuzz

bench: $(BIN)/wadud
	$(BIN)/python -m benchmarks.booking.run
	$(BIN)/python -m benchmarks.turn.run
	$(BIN)/python -m benchmarks.chat.run
	$(BIN)/python -m benchmarks.sfu.run
	$(BIN)/python -m benchmarks.cascade.run

clean:
	rm -rf $(VENV) build *.egg-info */_*.so */*/_*.so

# Coverage-guided fuzzing (fuzz/, issue 35): each target for FUZZ_SECONDS under
# atheris, the C extensions rebuilt with ASan and UBSan into build/fuzz.
# FUZZ_TARGETS picks some (default all). Crashes land in fuzz/crashes/, where
# the default suite replays them.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=

$(VENV)/.fuzz: $(BIN)/wadud
	$(BIN)/pip install --quiet -e '.[dev,fuzz]'
	touch $@

.PHONY: fuzz
fuzz: $(VENV)/.fuzz
	$(BIN)/python -m fuzz.all --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)
