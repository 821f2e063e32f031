# mayhem — the front door. `make run` and `make test` are all a new machine needs.
SHELL := /bin/bash
BUILD ?= build
JOBS ?= 2
BUILD_TYPE ?= RelWithDebInfo
CMAKE_FLAGS ?=

# Debian packages the build, the tests and the benchmarks need.
DEB_PACKAGES := g++ cmake make pkg-config python3 \
  libuv1-dev nlohmann-json3-dev prometheus-cpp-dev libcivetweb-dev doctest-dev \
  libcli11-dev libspdlog-dev libfmt-dev libsqlite3-dev libhiredis-dev libpq-dev \
  redis-server redis-tools postgresql prometheus clang-format \
  time nodejs node-redis golang-go

.PHONY: all deps build run test asan tsan bench chaos format format-check clean help

all: build

help:
	@echo "make run    install missing packages, build, run the worker on its defaults"
	@echo "make test   install missing packages, build, run every test (ctest)"
	@echo "make asan   build with AddressSanitizer+UBSan into build-asan/ and run the suite"
	@echo "make tsan   build with ThreadSanitizer into build-tsan/ and run the suite"
	@echo "make bench  run scripts/bench (see BENCHMARKS.md)"
	@echo "make chaos  the long chaos test: 3 workers, kills and Redis outages, 10 minutes"
	@echo "make format apply clang-format to every C++ file"

deps:
	@./scripts/deps $(DEB_PACKAGES)

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

run: build
	./$(BUILD)/mayhem worker

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

asan: deps
	$(MAKE) --no-print-directory build-san SAN=address BUILD=build-asan
tsan: deps
	$(MAKE) --no-print-directory build-san SAN=thread BUILD=build-tsan

# Every process the suite starts (unit tests, workers, publishers) writes its sanitizer reports
# to $(BUILD)/sanitizer-reports/; the target fails if there is one, also from a process whose
# exit code no test looked at (a worker killed on purpose, a helper run).
SAN_REPORTS = $(CURDIR)/$(BUILD)/sanitizer-reports
SAN_ENV_address = ASAN_OPTIONS=log_path=$(SAN_REPORTS)/asan UBSAN_OPTIONS=log_path=$(SAN_REPORTS)/ubsan:print_stacktrace=1
SAN_ENV_thread = TSAN_OPTIONS=log_path=$(SAN_REPORTS)/tsan

build-san:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Debug -DMAYHEM_SANITIZE=$(SAN) -DMAYHEM_CHAOS_IN_TESTS=OFF
	cmake --build $(BUILD) -j$(JOBS)
	rm -rf $(SAN_REPORTS) && mkdir -p $(SAN_REPORTS)
	cd $(BUILD) && MAYHEM_SANITIZED=$(SAN) $(SAN_ENV_$(SAN)) ctest --output-on-failure -j$(JOBS); \
	  status=$$?; \
	  if [ -n "$$(ls -A $(SAN_REPORTS))" ]; then \
	    cat $(SAN_REPORTS)/*; echo "sanitizer reports: $(SAN_REPORTS)"; exit 1; \
	  fi; \
	  exit $$status

bench: build
	./scripts/bench $(BENCH_ARGS)

# The long form of tests/chaos/chaos.py (the short one is "chaos: short" in ctest, see
# MAYHEM_CHAOS_IN_TESTS). CHAOS_ARGS adds flags, e.g. CHAOS_ARGS="--seed 42 -v".
chaos: build
	MAYHEM_BIN=$(abspath $(BUILD))/mayhem python3 tests/chaos/chaos.py --minutes 10 --requests 100000 $(CHAOS_ARGS)

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp')
format-check:
	clang-format --dry-run -Werror $$(git ls-files '*.cpp' '*.hpp')

clean:
	rm -rf build build-asan build-tsan
