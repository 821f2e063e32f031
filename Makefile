# mayhem — the front door. `make run` and `make test` are all a new machine needs.
SHELL := /bin/bash
BUILD ?= build
JOBS ?= 2
# ctest runs this many tests at once: most of a test's time is spent waiting on the worker, a
# server, a socket or a timer, so twice the cores keeps both busy without starving a test.
TEST_JOBS ?= 4
BUILD_TYPE ?= RelWithDebInfo
CMAKE_FLAGS ?=

# Debian packages, per command: building and running the worker (make build, make run); the
# tests add theirs (make test, make asan, make tsan, make fuzz), the benchmarks theirs (make bench).
BUILD_PACKAGES := g++ cmake make pkg-config \
  libuv1-dev nlohmann-json3-dev prometheus-cpp-dev libmicrohttpd-dev \
  libcli11-dev libspdlog-dev libfmt-dev libsqlite3-dev libhiredis-dev libsystemd-dev libpq-dev \
  libcurl4-openssl-dev libssl-dev
TEST_PACKAGES := python3 python3-yaml doctest-dev redis-server redis-tools postgresql prometheus \
  clang-format systemd time clang libclang-rt-14-dev openssl
BENCH_PACKAGES := python3 python3-uvloop redis-server redis-tools postgresql time nodejs node-redis golang-go

.PHONY: all deps deps-test deps-bench build run test fuzz asan tsan bench chaos format format-check clean help

all: build

help:
	@echo "make run    install what building and running need, build, run the worker on its defaults"
	@echo "make test   install what the tests need too, build with tests, run every test (ctest)"
	@echo "make fuzz   build the libFuzzer targets with clang into build-fuzz/, run each FUZZ_SECONDS (60)"
	@echo "make asan   build with AddressSanitizer+UBSan into build-asan/ and run the suite"
	@echo "make tsan   build with ThreadSanitizer into build-tsan/ and run the suite"
	@echo "make bench  run scripts/bench (see BENCHMARKS.md)"
	@echo "make chaos  the long chaos test: 3 workers, kills and Redis outages, 10 minutes"
	@echo "make format apply clang-format to every C++ file"

deps:
	@./scripts/deps $(BUILD_PACKAGES)
deps-test:
	@./scripts/deps $(BUILD_PACKAGES) $(TEST_PACKAGES)
deps-bench:
	@./scripts/deps $(BUILD_PACKAGES) $(BENCH_PACKAGES)
	@# The npm packages of the baselines (scripts/baseline/package-lock.json: the official
	@# Pub/Sub client for Node.js is on the npm registry, not in Debian); only for make bench.
	@# NodeSource's nodejs carries npm, Debian's does not (its npm package then).
	@command -v npm >/dev/null || ./scripts/deps npm
	cd scripts/baseline && npm ci --no-audit --no-fund --loglevel=error

# A build dir made by make build or make run has no tests (BUILD_TESTING=OFF: no doctest, no
# promtool needed); make test turns them on in it.
$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DBUILD_TESTING=OFF $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

run: build
	./$(BUILD)/mayhem worker

test: deps-test $(BUILD)/CMakeCache.txt
	cmake -S . -B $(BUILD) -DBUILD_TESTING=ON >/dev/null
	$(MAKE) --no-print-directory build
	cd $(BUILD) && ctest --output-on-failure -j$(TEST_JOBS)

# libFuzzer targets (tests/fuzz): their own build with clang, ASan and UBSan; each runs
# FUZZ_SECONDS as the ctest test "fuzz: <target>", starting from its seeds (tests/fuzz/<target>/)
# and what earlier runs found (build-fuzz/corpus/). A crash or broken property fails the run and
# leaves the input in build-fuzz/artifacts/ (replay: build-fuzz/fuzz_<target> <file>).
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
fuzz: deps-test
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DMAYHEM_FUZZ=ON -DMAYHEM_FUZZ_SECONDS=$(FUZZ_SECONDS) >/dev/null
	cmake --build $(FUZZ_BUILD) -j$(JOBS)
	cd $(FUZZ_BUILD) && ctest --output-on-failure -j$(JOBS)

asan: deps-test
	$(MAKE) --no-print-directory build-san SAN=address BUILD=build-asan
tsan: deps-test
	$(MAKE) --no-print-directory build-san SAN=thread BUILD=build-tsan

# Every process the suite starts (unit tests, workers, publishers) writes its sanitizer reports
# to $(BUILD)/sanitizer-reports/; the target fails if there is one, also from a process whose
# exit code no test looked at (a worker killed on purpose, a helper run).
SAN_REPORTS = $(CURDIR)/$(BUILD)/sanitizer-reports
SAN_ENV_address = ASAN_OPTIONS=log_path=$(SAN_REPORTS)/asan UBSAN_OPTIONS=log_path=$(SAN_REPORTS)/ubsan:print_stacktrace=1
SAN_ENV_thread = TSAN_OPTIONS=log_path=$(SAN_REPORTS)/tsan:suppressions=$(CURDIR)/tests/tsan.supp
# What a sanitizer build does not run (CI's 20 minutes): tests of no C++ of ours (benchmarks,
# promtool, the deploy files, README against --help); and under TSan, which looks for races
# between threads, the tests of loop-thread-only protocol and policy code (Redis source, Pub/Sub
# and TCP sources, safety rails, command templates, signing, credentials), which ASan runs.
# The ctest names of every test of the integration files given ('a|b'): "integration: a" or
# "integration: a.Class.test_method".
san_files = ^integration: ($(1))(\.|$$)
SAN_SKIP_address = ^bench: |^deploy: |$(call san_files,test_deploy|test_readme_help)
SAN_SKIP_thread = $(SAN_SKIP_address)|$(call san_files,test_pubsub|test_safety|test_redis|test_redis_claims|test_redis_states|test_rails|test_many_workers|test_exec_children|test_auth|test_worker_cli|test_pubsub_auth|test_tcp)

build-san:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Debug -DMAYHEM_SANITIZE=$(SAN) -DMAYHEM_CHAOS_IN_TESTS=OFF
	cmake --build $(BUILD) -j$(JOBS)
	rm -rf $(SAN_REPORTS) && mkdir -p $(SAN_REPORTS)
	cd $(BUILD) && MAYHEM_SANITIZED=$(SAN) $(SAN_ENV_$(SAN)) ctest --output-on-failure -j$(TEST_JOBS) -E '$(SAN_SKIP_$(SAN))'; \
	  status=$$?; \
	  if [ -n "$$(ls -A $(SAN_REPORTS))" ]; then \
	    cat $(SAN_REPORTS)/*; echo "sanitizer reports: $(SAN_REPORTS)"; exit 1; \
	  fi; \
	  exit $$status

bench: deps-bench build
	./scripts/bench $(BENCH_ARGS)

# The long form of tests/chaos/chaos.py (the short one is "chaos: short" in ctest, see
# MAYHEM_CHAOS_IN_TESTS). CHAOS_ARGS adds flags, e.g. CHAOS_ARGS="--seed 42 -v".
chaos: deps-test build
	MAYHEM_BIN=$(abspath $(BUILD))/mayhem python3 tests/chaos/chaos.py --minutes 10 --requests 100000 \
		--verify --max-completed-twice-per-kill 1 --settle-timeout 900 $(CHAOS_ARGS)

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp')
format-check:
	clang-format --dry-run -Werror $$(git ls-files '*.cpp' '*.hpp')

clean:
	rm -rf build build-asan build-tsan build-fuzz
