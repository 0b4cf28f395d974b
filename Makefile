# moonwire: the two commands of the quick start and the developer targets.
#   make run   installs missing packages, builds, serves apps/chat on http://127.0.0.1:8080/
#   make test  the same set-up, then every test (unit, integration, independent clients)
BUILD      ?= build
BUILD_ASAN ?= build-asan
APP        ?= apps/chat/app.lua
LISTEN     ?= 127.0.0.1:8080
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps test-deps build run test test-asan test-valgrind soak lint format node-deps fuzz \
        bench bench-smoke clean

all: build

deps:
	@scripts/install-deps.sh build

test-deps:
	@scripts/install-deps.sh test

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j$(JOBS)

run: build
	$(BUILD)/moonwire $(APP) --listen $(LISTEN)

node-deps: test-deps
	@cd spec/clients/node && { [ -d node_modules/ws ] || npm ci --no-audit --no-fund --silent; }
	@cd spec/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --silent; }

test: test-deps build node-deps lint
	cd $(BUILD) && ctest --output-on-failure -j2 --timeout 300

# The whole suite again with AddressSanitizer and UndefinedBehaviorSanitizer.
test-asan: test-deps node-deps
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DMW_SANITIZE=ON >/dev/null
	cmake --build $(BUILD_ASAN) -j$(JOBS)
	cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j2 --timeout 600

# The integration specs with the server under valgrind (no leak, no invalid
# access: any valgrind error fails the run). Logs in $(VALGRIND_DIR).
# Per checkout: the target wipes it first, and two checkouts must not share it.
# Not under nohup: scripts/valgrind-moonwire must forward SIGHUP (reloads) and
# refuses to start when it is ignored.
VALGRIND_DIR ?= $(CURDIR)/$(BUILD)/valgrind
VALGRIND_SPECS ?= spec/handlers_spec.lua spec/framing_spec.lua spec/app_pubsub_spec.lua \
                  spec/clients_spec.lua
test-valgrind: test-deps build
	rm -rf $(VALGRIND_DIR)
	MW_VALGRIND_DIR=$(VALGRIND_DIR) MOONWIRE_REAL_BIN=$(CURDIR)/$(BUILD)/moonwire \
	  MOONWIRE_BIN=$(CURDIR)/scripts/valgrind-moonwire busted --lua=luajit -o utfTerminal $(VALGRIND_SPECS)
	@sleep 3; bad=$$(grep -L "ERROR SUMMARY: 0 errors" $(VALGRIND_DIR)/vg.*.log); \
	  if [ -n "$$bad" ]; then echo "valgrind found errors in: $$bad"; exit 1; fi; \
	  echo "valgrind: $$(ls $(VALGRIND_DIR)/vg.*.log | wc -l) server runs, no errors"

# Thousands of connections with churn, messages and publishes; prints RSS,
# fds and Lua memory before, during and after (SOAK_SECONDS, default 120).
SOAK_SECONDS ?= 120
soak: build
	MOONWIRE_BIN=$(CURDIR)/$(BUILD)/moonwire /usr/bin/python3 bench/soak.py --duration $(SOAK_SECONDS)

# libFuzzer targets (core/fuzz), each for FUZZ_SECONDS, new inputs kept in
# build-fuzz/ (the committed corpus is only read). A crash stops with the
# input saved as build-fuzz/crash-*: add it to core/fuzz/corpus/<target>/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= http ws_frame inflate
fuzz: test-deps
	@mkdir -p build-fuzz
	@for t in $(FUZZ_TARGETS); do \
	  clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
	    -Icore/include -Icore/src core/fuzz/fuzz_$$t.c core/src/*.c \
	    -lssl -lcrypto -lev -lz -lm -o build-fuzz/fuzz_$$t || exit 1; \
	  mkdir -p build-fuzz/corpus-$$t; \
	  dict=; [ -f core/fuzz/$$t.dict ] && dict=-dict=core/fuzz/$$t.dict; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  (cd build-fuzz && ./fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	     $$( [ -n "$$dict" ] && echo -dict=../core/fuzz/$$t.dict ) \
	     corpus-$$t ../core/fuzz/corpus/$$t 2>&1 | tail -4) || exit 1; \
	  ls build-fuzz/crash-* >/dev/null 2>&1 && { echo "fuzz: $$t crashed"; exit 1; }; \
	done; echo "fuzz: no crashes"

# Benchmarks (bench/run.sh; not part of make test): moonwire against a raw
# TCP echo, gorilla/websocket, Node ws and nginx + lua-resty-websocket;
# writes docs/benchmarks.md and its plots. About 30 minutes.
bench: build
	bench/install-deps.sh
	$(MAKE) -C bench bench

bench-smoke: build
	bench/smoke.sh $(BUILD)/moonwire

lint: test-deps
	luacheck -q lua apps spec extensions bench
	clang-format --dry-run -Werror core/src/*.[ch] core/bind/*.[ch] core/main.c core/test/*.[ch] \
	  core/include/moonwire/*.h
	$(MAKE) -s -C bench format-check

format:
	clang-format -i core/src/*.[ch] core/bind/*.[ch] core/main.c core/test/*.[ch] \
	  core/include/moonwire/*.h
	$(MAKE) -s -C bench format

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
