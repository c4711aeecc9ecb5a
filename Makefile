# ferry — build, test, demo, bench, install.
#
# The public targets first make sure the Debian packages are there
# (scripts/deps.sh), then run this Makefile again for the real work, so that
# the pkg-config lookups below see the freshly installed libraries.
#
#   make            libferry, ferry-relay, ferry-reconcile       (build/rel)
#   make test       the whole suite under ASan+UBSan             (build/asan)
#   make demo       ferry end to end on a throwaway PostgreSQL
#   make bench      benchmarks, as ratios against a same-run baseline
#   make install PREFIX=/usr/local   (after `make`; installs only)
#   make uninstall PREFIX=/usr/local
#   make valgrind   the suite under valgrind instead of the sanitizers
#   make fuzz       each libFuzzer target for FUZZ_SECONDS (60) s  (build/fuzz)
#   make clean

PREFIX  ?= /usr/local
DESTDIR ?=
CC      ?= cc

# libferry reads saga definitions with libyaml's event parser (lib/saga_def.c
# says why not libcyaml); the relay's config still uses libcyaml.
PKGS        = libpq jansson rdkafka yaml-0.1
DAEMON_PKGS = $(PKGS) libcyaml libmicrohttpd
TEST_PKGS   = $(DAEMON_PKGS) cmocka
# Lazy (=): evaluated by the inner make, after deps.sh has run.
PKG_CFLAGS  = $(shell pkg-config --cflags $(TEST_PKGS))
PKG_LIBS    = $(shell pkg-config --libs $(PKGS))
DAEMON_LIBS = $(shell pkg-config --libs $(DAEMON_PKGS)) -pthread
TEST_LIBS   = $(shell pkg-config --libs $(TEST_PKGS)) -pthread -lm

# Error messages live in fixed-size buffers (ferry_error) and are cut short
# on purpose when too long, hence -Wno-format-truncation.
WARN = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
       -Wpointer-arith -Wformat=2 -Wvla -Wno-unused-parameter -Wno-format-truncation
BASE_CFLAGS = -std=c11 -D_GNU_SOURCE -g $(WARN) -Ilib $(PKG_CFLAGS)

# Test hooks (an env var that makes the consumer raise(SIGKILL) after its
# Nth commit, or the relay inject librdkafka's fatal error) are compiled only
# into the test builds, build/asan and build/vg, as SQLite's seams are only
# under SQLITE_TEST. build/rel — what `make install`, `make demo` and
# `make bench` use — has none; tests/install_check.sh checks both sides.
TEST_HOOKS  = -DFERRY_TEST_HOOKS
REL_CFLAGS  = $(BASE_CFLAGS) -O2 -fPIC -fvisibility=hidden
ASAN_FLAGS  = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer
ASAN_CFLAGS = $(BASE_CFLAGS) -O1 -fvisibility=hidden $(ASAN_FLAGS) $(TEST_HOOKS)
# Valgrind cannot run ASan binaries: the same tests, unsanitized.
VG_CFLAGS   = $(BASE_CFLAGS) -O1 $(TEST_HOOKS)

VERSION = 0.1.0
SOMAJOR = 0

LIB_SRC   = $(wildcard lib/*.c)
SCHEMAS   = $(sort $(wildcard schemas/[0-9][0-9][0-9]_*.sql))
GEN       = build/gen/migrations.c
HARNESS   = $(filter-out %_selftest.c,$(wildcard tests/harness/*.c))
TEST_SRC  = $(wildcard tests/test_*.c)
# What every test links besides the harness: tests/testutil.c and tests/tu_*.c.
TESTUTIL  = tests/testutil.c $(wildcard tests/tu_*.c)
# The relay's parts, apart from main(), go into a static library that the
# tests link too.
RELAYLIB_SRC = $(filter-out daemon/main.c,$(wildcard daemon/*.c))
RECONCILE_SRC = $(wildcard reconciler/*.c)
# The reconciler's parts, apart from main(), likewise (test_rules links the
# rules loader).
RECONCILELIB_SRC = $(filter-out reconciler/main.c,$(RECONCILE_SRC))

REL_LIB_OBJ  = $(LIB_SRC:%.c=build/rel/%.o) build/rel/gen/migrations.o
ASAN_LIB_OBJ = $(LIB_SRC:%.c=build/asan/%.o) build/asan/gen/migrations.o

PROGRAMS = build/rel/ferry-relay build/rel/ferry-reconcile
EXAMPLES = build/rel/emit-demo build/rel/account-service build/rel/account-demo \
           build/rel/saga-demo build/rel/lang-demo
BENCHES  = build/rel/bench-emit build/rel/bench-relay build/rel/bench-consume \
           build/rel/bench-saga build/rel/bench-reconcile build/rel/bench-wal
TESTS    = $(TEST_SRC:tests/%.c=build/asan/tests/%)
# The stamp of examples/node's modules (npm ci from package-lock.json).
NODE_MODULES = examples/node/node_modules/.package-lock.json
FUZZ_SRC = $(wildcard tests/fuzz/fuzz_*.c)
FUZZERS  = $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)

.PHONY: all test demo bench install uninstall clean valgrind deps saga-sim-broken fuzz \
        all-inner test-inner demo-inner bench-inner valgrind-inner fuzz-inner fuzz-smoke
.DEFAULT_GOAL := all
# Keep objects between runs: they are not intermediate to us.
.SECONDARY:

all: deps
	@$(MAKE) --no-print-directory all-inner
test: deps
	@$(MAKE) --no-print-directory test-inner
# The build first and quietly (-s: a failing command still shows), so that
# the demo's story is what is on the screen.
demo: deps
	@echo "make demo: building the demos and programs quietly..."
	@$(MAKE) -s --no-print-directory $(EXAMPLES) $(PROGRAMS)
	@$(MAKE) --no-print-directory demo-inner
bench: deps
	@$(MAKE) --no-print-directory bench-inner
valgrind: deps
	@$(MAKE) --no-print-directory valgrind-inner
fuzz: deps
	@$(MAKE) --no-print-directory fuzz-inner
deps:
	@sh scripts/deps.sh

all-inner: build/rel/libferry.a build/rel/libferry.so $(PROGRAMS)

# Also builds the release tree, the demo and the benchmark, so that a change
# that breaks any of them fails here rather than in `make demo`.
#
# One runner runs it all, FERRY_TEST_JOBS (6) at a time: the test binaries,
# the broken-saga check and each fuzzer's smoke run, logs in build/test-logs/
# (scripts/run-tests.sh says how). Everything is built first, here, so that
# no job builds. CPU_JOBS are those that compute rather than wait: the
# runner keeps a core free of them for the tests that wait on deadlines.
# The fuzzers are not among them: a smoke run lasts FUZZ_SMOKE_SECONDS
# however much CPU it gets, so each runs at the lowest priority (nice 19)
# alongside the rest, on the cycles the waiting tests leave idle, rather
# than one after another on the critical path.
CPU_JOBS = test_relay_sim test_saga_sim saga-sim-broken
test-inner: $(TESTS) build/asan/tests/pgtmp_selftest build/asan/ferry-relay \
            build/asan/ferry-reconcile build/asan/libferry.a $(FUZZERS) \
            all-inner $(EXAMPLES) $(BENCHES) $(NODE_MODULES)
	@bash scripts/run-tests.sh \
	    --job saga-sim-broken '$(SAGA_SIM_BROKEN)' \
	    $(foreach f,$(FUZZERS),--job $(notdir $(f)) 'nice -n 19 sh scripts/run-fuzz.sh $(FUZZ_SMOKE_SECONDS) $(f)') \
	    $(foreach j,$(CPU_JOBS),--cpu $(j)) \
	    build/asan/tests/pgtmp_selftest $(TESTS) tests/install_check.sh

# The saga simulator must catch every deliberately broken engine
# (lib/saga_step.c, FERRY_SAGA_BROKEN=N) within 1,000 seeds.
SAGA_SIM_BROKEN = sh tests/saga_sim_broken.sh "$(CC) $(ASAN_CFLAGS)" build/asan/libferry.a \
                  "$(TEST_LIBS)" build/asan/saga-broken
saga-sim-broken: build/asan/libferry.a
	$(SAGA_SIM_BROKEN)

# libFuzzer targets: tests/fuzz/fuzz_NAME.c, seeds in tests/fuzz/corpus/NAME/
# (scripts/run-fuzz.sh says how they run). `make test` runs each for
# FUZZ_SMOKE_SECONDS; `make fuzz` for FUZZ_SECONDS, e.g. make fuzz FUZZ_SECONDS=3600.
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 12
fuzz-inner: $(FUZZERS)
	@sh scripts/run-fuzz.sh $(FUZZ_SECONDS) $(FUZZERS)
fuzz-smoke: $(FUZZERS)
	@sh scripts/run-fuzz.sh $(FUZZ_SMOKE_SECONDS) $(FUZZERS)

valgrind-inner: $(TESTS:build/asan/%=build/vg/%) build/asan/ferry-relay build/asan/ferry-reconcile
	@FERRY_VALGRIND=1 bash scripts/run-tests.sh $(TESTS:build/asan/%=build/vg/%)

demo-inner: $(EXAMPLES) $(PROGRAMS) build/rel/ferry-reconcile $(NODE_MODULES)
	@FERRY_RELAY_BIN=build/rel/ferry-relay build/rel/emit-demo
	@FERRY_RELAY_BIN=build/rel/ferry-relay FERRY_ACCOUNT_SERVICE_BIN=build/rel/account-service \
	    build/rel/account-demo
	@FERRY_RELAY_BIN=build/rel/ferry-relay FERRY_RECONCILE_BIN=build/rel/ferry-reconcile \
	    build/rel/saga-demo
	@FERRY_RELAY_BIN=build/rel/ferry-relay FERRY_ACCOUNT_SERVICE_BIN=build/rel/account-service \
	    build/rel/lang-demo

bench-inner: $(BENCHES) build/rel/ferry-relay build/rel/ferry-reconcile
	@build/rel/bench-emit
	@FERRY_RELAY_BIN=build/rel/ferry-relay build/rel/bench-relay
	@FERRY_RELAY_BIN=build/rel/ferry-relay build/rel/bench-consume
	@FERRY_RELAY_BIN=build/rel/ferry-relay build/rel/bench-saga
	@FERRY_RECONCILE_BIN=build/rel/ferry-reconcile build/rel/bench-reconcile
	@FERRY_RELAY_BIN=build/rel/ferry-relay build/rel/bench-wal

# The Node.js reference service's modules (NODE_MODULES, above), exactly
# as its lock file pins them; installed once, again only when the lock
# file changes. npm ci writes node_modules/.package-lock.json last.
$(NODE_MODULES): examples/node/package-lock.json examples/node/package.json
	cd examples/node && npm ci --no-audit --no-fund --loglevel=error

# ---------------------------------------------------------------- generated
$(GEN): $(SCHEMAS) scripts/embed-sql.sh
	@mkdir -p $(@D)
	sh scripts/embed-sql.sh $@ $(SCHEMAS)

# ---------------------------------------------------------------- release
build/rel/%.o: %.c lib/ferry.h lib/internal.h $(wildcard tests/harness/*.h daemon/*.h reconciler/*.h lib/*.h)
	@mkdir -p $(@D)
	$(CC) $(REL_CFLAGS) -DFERRY_BUILDING -c $< -o $@
build/rel/gen/migrations.o: $(GEN) lib/internal.h
	@mkdir -p $(@D)
	$(CC) $(REL_CFLAGS) -DFERRY_BUILDING -c $< -o $@

build/rel/libferry.a: $(REL_LIB_OBJ)
	rm -f $@
	ar rcs $@ $^
build/rel/libferry.so.$(VERSION): $(REL_LIB_OBJ)
	$(CC) -shared -Wl,-soname,libferry.so.$(SOMAJOR) -Wl,--no-undefined \
	    -o $@ $^ $(PKG_LIBS)
build/rel/libferry.so: build/rel/libferry.so.$(VERSION)
	ln -sf libferry.so.$(VERSION) build/rel/libferry.so.$(SOMAJOR)
	ln -sf libferry.so.$(VERSION) $@

build/rel/librelay.a: $(RELAYLIB_SRC:%.c=build/rel/%.o)
	rm -f $@
	ar rcs $@ $^
build/rel/libreconcile.a: $(RECONCILELIB_SRC:%.c=build/rel/%.o)
	rm -f $@
	ar rcs $@ $^
build/rel/ferry-relay: build/rel/daemon/main.o build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)
build/rel/ferry-reconcile: build/rel/reconciler/main.o build/rel/libreconcile.a build/rel/librelay.a \
                          build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

build/rel/emit-demo: build/rel/examples/emit_demo.o build/rel/examples/narrate.o \
                     $(HARNESS:%.c=build/rel/%.o) \
                     build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

# The account service links libferry alone, as a user's service would.
build/rel/account-service: build/rel/examples/account_service.o build/rel/libferry.a
	$(CC) -o $@ $^ $(shell pkg-config --libs $(PKGS)) -pthread

build/rel/account-demo: build/rel/examples/account_demo.o build/rel/examples/narrate.o \
                        $(HARNESS:%.c=build/rel/%.o) \
                        build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

build/rel/lang-demo: build/rel/examples/lang_demo.o build/rel/examples/narrate.o \
                     $(HARNESS:%.c=build/rel/%.o) \
                     build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)
build/rel/saga-demo: build/rel/examples/saga_demo.o build/rel/examples/narrate.o \
                     $(HARNESS:%.c=build/rel/%.o) \
                     build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

build/rel/bench-consume: build/rel/bench/bench_consume.o build/rel/bench/benchutil.o $(HARNESS:%.c=build/rel/%.o) \
                         build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

build/rel/bench-saga: build/rel/bench/bench_saga.o build/rel/bench/benchutil.o $(HARNESS:%.c=build/rel/%.o) \
                      build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

build/rel/bench-emit: build/rel/bench/bench_emit.o build/rel/bench/benchutil.o $(HARNESS:%.c=build/rel/%.o) \
                      build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

build/rel/bench-relay: build/rel/bench/bench_relay.o build/rel/bench/benchutil.o $(HARNESS:%.c=build/rel/%.o) \
                       build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

build/rel/bench-wal: build/rel/bench/bench_wal.o build/rel/bench/benchutil.o $(HARNESS:%.c=build/rel/%.o) \
                     build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

build/rel/bench-reconcile: build/rel/bench/bench_reconcile.o build/rel/bench/benchutil.o $(HARNESS:%.c=build/rel/%.o) \
                           build/rel/librelay.a build/rel/libferry.a
	$(CC) -o $@ $^ $(DAEMON_LIBS)

# ---------------------------------------------------------------- sanitized
build/asan/%.o: %.c lib/ferry.h lib/internal.h $(wildcard tests/harness/*.h daemon/*.h reconciler/*.h lib/*.h tests/*.h)
	@mkdir -p $(@D)
	$(CC) $(ASAN_CFLAGS) -DFERRY_BUILDING -c $< -o $@
build/asan/gen/migrations.o: $(GEN) lib/internal.h
	@mkdir -p $(@D)
	$(CC) $(ASAN_CFLAGS) -DFERRY_BUILDING -c $< -o $@
build/asan/libferry.a: $(ASAN_LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

build/asan/librelay.a: $(RELAYLIB_SRC:%.c=build/asan/%.o)
	rm -f $@
	ar rcs $@ $^
build/asan/libreconcile.a: $(RECONCILELIB_SRC:%.c=build/asan/%.o)
	rm -f $@
	ar rcs $@ $^
build/asan/ferry-relay: build/asan/daemon/main.o build/asan/librelay.a build/asan/libferry.a
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(DAEMON_LIBS)
build/asan/ferry-reconcile: build/asan/reconciler/main.o build/asan/libreconcile.a build/asan/librelay.a \
                          build/asan/libferry.a
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(DAEMON_LIBS)
build/asan/tests/pgtmp_selftest: build/asan/tests/harness/pgtmp_selftest.o \
                                 build/asan/tests/harness/pgtmp.o
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(TEST_LIBS)
# The relay simulator links the scheduler built with its deliberately
# broken variants (-DFERRY_SCHED_TEST); the relay never has them.
build/%/tests/relay_sched_test.o: daemon/relay_sched.c daemon/relay_sched.h
	@mkdir -p $(@D)
	$(CC) $(if $(filter build/vg/%,$@),$(VG_CFLAGS),$(ASAN_CFLAGS)) -DFERRY_BUILDING \
	    -DFERRY_SCHED_TEST -c $< -o $@
build/%/tests/test_relay_sim.o: tests/test_relay_sim.c daemon/relay_sched.h
	@mkdir -p $(@D)
	$(CC) $(if $(filter build/vg/%,$@),$(VG_CFLAGS),$(ASAN_CFLAGS)) -DFERRY_BUILDING \
	    -DFERRY_SCHED_TEST -c $< -o $@
build/asan/tests/test_relay_sim: build/asan/tests/test_relay_sim.o build/asan/tests/relay_sched_test.o
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(TEST_LIBS)
build/vg/tests/test_relay_sim: build/vg/tests/test_relay_sim.o build/vg/tests/relay_sched_test.o
	$(CC) -o $@ $^ $(TEST_LIBS)

build/asan/tests/test_%: build/asan/tests/test_%.o $(TESTUTIL:%.c=build/asan/%.o) \
                         $(HARNESS:%.c=build/asan/%.o) build/asan/libreconcile.a \
                         build/asan/librelay.a build/asan/libferry.a
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(TEST_LIBS)

# Valgrind cannot run ASan binaries: the same tests, unsanitized (VG_CFLAGS).
build/vg/%.o: %.c lib/ferry.h lib/internal.h $(wildcard tests/harness/*.h daemon/*.h reconciler/*.h lib/*.h tests/*.h)
	@mkdir -p $(@D)
	$(CC) $(VG_CFLAGS) -DFERRY_BUILDING -c $< -o $@
build/vg/gen/migrations.o: $(GEN) lib/internal.h
	@mkdir -p $(@D)
	$(CC) $(VG_CFLAGS) -DFERRY_BUILDING -c $< -o $@
build/vg/libferry.a: $(LIB_SRC:%.c=build/vg/%.o) build/vg/gen/migrations.o
	rm -f $@
	ar rcs $@ $^
build/vg/librelay.a: $(RELAYLIB_SRC:%.c=build/vg/%.o)
	rm -f $@
	ar rcs $@ $^
build/vg/libreconcile.a: $(RECONCILELIB_SRC:%.c=build/vg/%.o)
	rm -f $@
	ar rcs $@ $^
build/vg/tests/test_%: build/vg/tests/test_%.o $(TESTUTIL:%.c=build/vg/%.o) \
                       $(HARNESS:%.c=build/vg/%.o) build/vg/libreconcile.a build/vg/librelay.a \
                       build/vg/libferry.a
	$(CC) -o $@ $^ $(TEST_LIBS)

# ---------------------------------------------------------------- fuzz
# clang, for libFuzzer: the library and the programs' parts instrumented
# for coverage (fuzzer-no-link) under ASan+UBSan; each target links
# libFuzzer's main. clang has no -Wformat-truncation to turn off.
FUZZ_CC     = clang
FUZZ_FLAGS  = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer
FUZZ_CFLAGS = $(filter-out -Wno-format-truncation,$(BASE_CFLAGS)) -O1 $(FUZZ_FLAGS)

build/fuzz/%.o: %.c lib/ferry.h lib/internal.h $(wildcard daemon/*.h reconciler/*.h lib/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -DFERRY_BUILDING -c $< -o $@
build/fuzz/tests/fuzz/%.o: tests/fuzz/%.c tests/fuzz/fuzz.h $(wildcard lib/*.h daemon/*.h reconciler/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -DFERRY_BUILDING -c $< -o $@
build/fuzz/gen/migrations.o: $(GEN) lib/internal.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -DFERRY_BUILDING -c $< -o $@
build/fuzz/libferry.a: $(LIB_SRC:%.c=build/fuzz/%.o) build/fuzz/gen/migrations.o
	rm -f $@
	ar rcs $@ $^
build/fuzz/librelay.a: $(RELAYLIB_SRC:%.c=build/fuzz/%.o)
	rm -f $@
	ar rcs $@ $^
build/fuzz/libreconcile.a: $(RECONCILELIB_SRC:%.c=build/fuzz/%.o)
	rm -f $@
	ar rcs $@ $^
build/fuzz/fuzz_%: build/fuzz/tests/fuzz/fuzz_%.o build/fuzz/libreconcile.a \
                   build/fuzz/librelay.a build/fuzz/libferry.a
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_FLAGS) -o $@ $^ $(TEST_LIBS)

# ---------------------------------------------------------------- install
# Installs only: no scripts/deps.sh (it may apt-get a PostgreSQL server,
# which installing a library has no business doing); `make` builds first.
# ferry.pc carries an rpath to $(PREFIX)/lib, so a program built with
# `pkg-config --libs ferry` runs without LD_LIBRARY_PATH; RPATH= turns it
# off (a distribution package). As root into /usr or /usr/local of the
# live system, ldconfig refreshes the loader's cache.
#
# Under share/ferry also the samples (packaging/*.yaml), the systemd units
# (packaging/systemd/, with @PREFIX@ made this PREFIX), LICENSE and
# CHANGELOG.md; tests/install_check.sh has systemd-analyze verify the units.
RPATH ?= -Wl,-rpath,$${libdir}
UNITS = $(notdir $(wildcard packaging/systemd/*.service))
SAMPLES = $(notdir $(wildcard packaging/*.yaml))
INSTALLED = include/ferry.h lib/libferry.a lib/libferry.so.$(VERSION) \
            lib/libferry.so.$(SOMAJOR) lib/libferry.so lib/pkgconfig/ferry.pc \
            bin/ferry-relay bin/ferry-reconcile share/ferry/saga.schema.json \
            $(SCHEMAS:schemas/%=share/ferry/%) $(SAMPLES:%=share/ferry/%) \
            $(UNITS:%=share/ferry/systemd/%) share/ferry/LICENSE share/ferry/CHANGELOG.md

install: all-inner
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	    $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/ferry
	install -m 644 lib/ferry.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 build/rel/libferry.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 build/rel/libferry.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libferry.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libferry.so.$(SOMAJOR)
	ln -sf libferry.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libferry.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@RPATH@|$(RPATH)|' \
	    scripts/ferry.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/ferry.pc
	install -m 755 $(PROGRAMS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(SCHEMAS) schemas/saga.schema.json $(DESTDIR)$(PREFIX)/share/ferry/
	install -d $(DESTDIR)$(PREFIX)/share/ferry/systemd
	install -m 644 $(SAMPLES:%=packaging/%) LICENSE CHANGELOG.md $(DESTDIR)$(PREFIX)/share/ferry/
	for u in $(UNITS); do \
	    sed -e 's|@PREFIX@|$(PREFIX)|g' packaging/systemd/$$u > $(DESTDIR)$(PREFIX)/share/ferry/systemd/$$u; \
	    chmod 644 $(DESTDIR)$(PREFIX)/share/ferry/systemd/$$u; \
	done
	@case "$(DESTDIR):$(PREFIX)" in :/usr|:/usr/local) \
	    if [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then echo ldconfig; ldconfig; fi;; \
	esac

uninstall:
	rm -f $(INSTALLED:%=$(DESTDIR)$(PREFIX)/%)
	-rmdir $(DESTDIR)$(PREFIX)/share/ferry/systemd $(DESTDIR)$(PREFIX)/share/ferry 2>/dev/null

clean:
	rm -rf build
