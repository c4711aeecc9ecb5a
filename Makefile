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
#   make help       the targets, the variants and the variables

PREFIX  ?= /usr/local
DESTDIR ?=
CC      ?= cc

# Every YAML file (saga definitions, rules, both programs' configuration)
# is read with libyaml's event parser through lib/yaml_walk.c (the README's
# Layout says why not libcyaml).
PKGS        = libpq jansson rdkafka yaml-0.1
DAEMON_PKGS = $(PKGS) libmicrohttpd
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
BASE_CFLAGS = -std=c11 -D_GNU_SOURCE -g $(WARN) -Ilib -Icommon $(PKG_CFLAGS)

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
# What both programs share and services do not (the lease protocol, the
# HTTP server behind --metrics, Prometheus text): common/, a static library
# both programs link, kept out of libferry.
COMMON_SRC = $(wildcard common/*.c)
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
# What the fuzz targets reach of the programs (their link maps say so):
# the relay's configuration and WAL message parsers, the rules loader and
# ${...} references. Only these are built for them (libfuzzparts.a), with
# libferry: building all of daemon/, reconciler/ and common/ with clang
# for six parsers cost 11 s of the 30 s of CPU the fuzz variant took, a
# tenth of `make test`'s build. A new target that reaches further fails
# to link, naming the symbol: add its file here.
FUZZ_PARTS_SRC = daemon/config.c daemon/relay_wal_msg.c reconciler/rules.c common/confref.c \
                 common/httpd.c

.PHONY: FORCE all help test demo bench install uninstall clean valgrind deps saga-sim-broken fuzz \
        all-inner test-inner demo-inner bench-inner valgrind-inner fuzz-inner fuzz-smoke \
        coverage coverage-inner
.DEFAULT_GOAL := all
# Keep objects between runs: they are not intermediate to us. (.PRECIOUS,
# not .SECONDARY: the latter would make every target intermediate, the .d
# files too, and a missing .d would no longer rebuild its object.)
.PRECIOUS: build/rel/%.o build/asan/%.o build/vg/%.o build/fuzz/%.o build/cov/%.o

# `make help`: the targets and the variables a caller sets.
define HELP
ferry: make TARGET [VARIABLE=value]...

Targets:
  all (default)  libferry (static and shared), ferry-relay, ferry-reconcile   build/rel
  test           the whole suite under ASan+UBSan, in parallel           build/asan
  valgrind       the same tests unsanitized, under valgrind              build/vg
  coverage       the same tests built with --coverage, and gcovr's line and
                 branch summary of lib/ common/ daemon/ reconciler/      build/cov
                 (report: build/cov/coverage.html)
  fuzz           each libFuzzer target for FUZZ_SECONDS                  build/fuzz
  demo           ferry end to end on a throwaway PostgreSQL
  bench          the benchmarks, as ratios against a same-run baseline
  install        what `make` built, into $$DESTDIR$$PREFIX; uninstall takes it away
  saga-sim-broken  the saga simulator against deliberately broken engines
  clean          remove build/
  build/VARIANT/THING  one product of one variant, e.g. build/vg/ferry-relay or
                 build/asan/tests/test_unit; VARIANT is one of: $(VARIANTS)

Variables:
  PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) RPATH (empty: no rpath in ferry.pc)
  CC=$(CC) FUZZ_CC=$(FUZZ_CC)
  FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SMOKE_SECONDS=$(FUZZ_SMOKE_SECONDS)
  JOBS=$(JOBS) (files built at once, unless make was given -jN)
  FERRY_TEST_JOBS, FERRY_TEST_CPU_JOBS, FERRY_TEST_TAIL, FERRY_TEST_TIMEOUT
                 (environment: scripts/run-tests.sh)

Lists: PROGRAMS, EXAMPLES, BENCHES (add to them); TESTS, FUZZERS (found:
tests/test_*.c, tests/fuzz/fuzz_*.c)
endef
export HELP
help:
	@printf '%s\n' "$$HELP"

# Each public target: the packages first, then NAME-inner in a new make,
# which builds a file per core unless the caller said how many (-jN): from
# a clean tree, `make test` spent 7.5 of its 20 minutes compiling one file
# at a time. What runs after the build (the runner, the benchmarks one by
# one) is one recipe and keeps its own order.
JOBS    ?= $(shell nproc 2>/dev/null || echo 1)
INNER_J  = $(if $(filter -j%,$(MAKEFLAGS)),,-j$(JOBS))
all test bench valgrind fuzz: deps
	@$(MAKE) $(INNER_J) --no-print-directory $@-inner
# The demo's build first and quietly (-s: a failing command still shows),
# so that the demo's story is what is on the screen.
demo: deps
	@echo "make demo: building the demos and programs quietly..."
	@$(MAKE) -s --no-print-directory $(EXAMPLES) $(PROGRAMS)
	@$(MAKE) --no-print-directory demo-inner
deps:
	@sh scripts/deps.sh

all-inner: build/rel/libferry.a build/rel/libferry.so $(PROGRAMS)

# Also builds the release tree, the demos and the benchmarks, so that a
# change that breaks any of them fails here rather than in `make demo`.
#
# One runner runs it all, FERRY_TEST_JOBS (10) at a time: the test binaries,
# the broken-saga check and each fuzzer's smoke run, logs in build/test-logs/
# (scripts/run-tests.sh says how). What the jobs run is built first, here,
# so that no two jobs build the same thing. The demos and the benchmarks,
# which no job runs, are built by a job of their own (build-extras), at the
# lowest priority, on the cycles the waiting tests leave idle, rather than
# before any test may start: 7 s of CPU, 4 s of wall time on 2 cores. It
# builds only their own objects (the harness, bench/, examples/) and links
# them with what all-inner built before.
#
# CPU_JOBS are those that compute rather than wait: the runner keeps a
# core free of them for the tests that wait on deadlines.
# The fuzzers are not among them: a smoke run lasts FUZZ_SMOKE_SECONDS
# however much CPU it gets, so each runs alongside the rest under
# SCHED_IDLE (chrt --idle; nice 19 still took a weighted share), on the
# cycles the tests leave idle, rather than one after another on the
# critical path.
CPU_JOBS = test_relay_sim test_relay_sim-rel test_saga_sim saga-sim-broken
test-inner: $(TESTS) build/asan/tests/pgtmp_selftest build/asan/ferry-relay \
            build/asan/ferry-reconcile build/asan/libferry.a $(FUZZERS) \
            all-inner $(NODE_MODULES) build/rel/tests/test_relay_sim
	@bash scripts/run-tests.sh \
	    --job saga-sim-broken '$(SAGA_SIM_BROKEN)' \
	    --job build-extras '$(BUILD_EXTRAS)' \
	    --job run_tests_selftest 'bash tests/run_tests_selftest.sh' \
	    --job test_relay_sim '$(RELAY_SIM_ASAN)' \
	    --job test_relay_sim-rel '$(RELAY_SIM_REL)' \
	    $(foreach j,$(SHARD_JOBS),--job $(call shard_name,$(j)) '$(call shard_cmd,$(j))') \
	    $(foreach f,$(FUZZERS),--job $(notdir $(f)) 'chrt --idle 0 sh scripts/run-fuzz.sh $(FUZZ_SMOKE_SECONDS) $(f)') \
	    $(foreach j,$(CPU_JOBS),--cpu $(j)) \
	    build/asan/tests/pgtmp_selftest \
	    $(filter-out %/test_relay_sim $(foreach j,$(SHARD_JOBS),%/$(call shard_test,$(j))),$(TESTS)) \
	    tests/install_check.sh

# The binaries that ran longest, as NAME:I/N: one job for each I, running
# the tests whose index is I modulo N (tu_shard, FERRY_TEST_SHARD), each
# job with a cluster and a broker of its own. They mostly wait: on
# consumer-group joins (3 s each in librdkafka 2.0.2's mock broker, a
# constant there; test_consume and test_saga join dozens of groups one
# after another), on relays started and killed as processes. As one job
# each, test_consume took 118 s, the critical path of the suite,
# test_relay 55, test_saga 45 and test_relay_faults 39, while the whole
# suite used one of the 2 cores. A binary whose tests depend on each
# other cannot be split: test_lang_services (44 s) is one chain, C ->
# Python -> Node.js.
SHARD_JOBS = test_consume:0/3 test_consume:1/3 test_consume:2/3 \
             test_relay:0/2 test_relay:1/2 test_relay_faults:0/2 test_relay_faults:1/2 \
             test_saga:0/2 test_saga:1/2
shard_test = $(firstword $(subst :, ,$(1)))
shard_name = $(call shard_test,$(1))-$(subst /,of,$(lastword $(subst :, ,$(1))))
shard_cmd  = FERRY_TEST_SHARD=$(lastword $(subst :, ,$(1))) build/asan/tests/$(call shard_test,$(1))

# A make of its own (not this one's jobserver, hence no MAKEFLAGS), one
# file at a time, with this one's compiler.
BUILD_EXTRAS = env -u MAKEFLAGS -u MAKELEVEL nice -n 19 $(MAKE) --no-print-directory \
               CC='$(CC)' $(EXAMPLES) $(BENCHES)

# The relay's simulator computes: 10,000 seeds took 54 s of CPU under
# ASan+UBSan (186 seeds/s), the longest job of the suite, where the
# optimised, unsanitised build/rel runs 875 seeds/s. So the suite runs
# seeds 0 .. N-1 (N = FERRY_SIM_SEEDS, default 10,000, the seeds it has
# always run) there, and the next N/20 under the sanitizers, which is
# where an out-of-bounds write or undefined behaviour in the scheduler
# would show: 10,500 seeds for 13 s of CPU instead of 10,000 for 54.
# (N/10 until the clusters moved to tmpfs: then the CPU jobs, which run
# one at a time, became the suite's critical path, and the sanitized
# seeds were 28 s of it.)
# Splitting the seeds over several ASan jobs instead would have kept all
# of them sanitized, but not saved a second of CPU on 2 cores.
# FERRY_SIM_SEEDS still scales both, e.g. FERRY_SIM_SEEDS=200000 make test.
RELAY_SIM_SEEDS = $(or $(FERRY_SIM_SEEDS),10000)
RELAY_SIM_REL   = FERRY_SIM_SEEDS=$(RELAY_SIM_SEEDS) build/rel/tests/test_relay_sim
# The sanitized job leaves the replay and the broken schedulers to the
# optimised one (FERRY_SIM_ONCE): the same code, twice the CPU.
RELAY_SIM_ASAN  = FERRY_SIM_FIRST=$(RELAY_SIM_SEEDS) FERRY_SIM_ONCE=1 \
                  FERRY_SIM_SEEDS=$$(( ($(RELAY_SIM_SEEDS) + 19) / 20 )) build/asan/tests/test_relay_sim

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

# The suite built with --coverage (build/cov), the relays and reconcilers
# it starts as processes too, then gcovr's summary of the code ferry ships
# (not the tests'). gcovr is a Debian package (scripts/deps.sh coverage);
# only this target needs it. Counts start from zero on every run. The
# timing-sensitive tests run unsanitized here, as under valgrind.
COV_TESTS = $(TESTS:build/asan/%=build/cov/%)
coverage: deps
	@sh scripts/deps.sh coverage
	@$(MAKE) $(INNER_J) --no-print-directory coverage-inner
coverage-inner: $(COV_TESTS) build/cov/ferry-relay build/cov/ferry-reconcile
	@find build/cov -name '*.gcda' -delete
	@FERRY_RELAY_BIN=build/cov/ferry-relay FERRY_RECONCILE_BIN=build/cov/ferry-reconcile \
	    FERRY_TEST_LOGDIR=build/cov/test-logs bash scripts/run-tests.sh $(COV_TESTS); \
	    rc=$$?; \
	    gcovr --root . --object-directory build/cov --filter 'lib/' --filter 'common/' \
	        --filter 'daemon/' --filter 'reconciler/' --exclude-unreachable-branches \
	        --print-summary --txt build/cov/coverage.txt \
	        --html-details build/cov/coverage.html build/cov && \
	    echo "coverage: build/cov/coverage.txt, build/cov/coverage.html"; \
	    exit $$rc

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
# The list of migrations as of the last build: rewritten only when it
# changes, so that removing or renaming one (which no prerequisite's time
# shows) embeds them again too.
SCHEMA_LIST = build/gen/schemas.list
$(SCHEMA_LIST): FORCE
	@mkdir -p $(@D)
	@echo '$(SCHEMAS)' | cmp -s - $@ || echo '$(SCHEMAS)' > $@

$(GEN): $(SCHEMAS) scripts/embed-sql.sh $(SCHEMA_LIST)
	@mkdir -p $(@D)
	sh scripts/embed-sql.sh $@ $(SCHEMAS)

FORCE:

# ---------------------------------------------------------------- variants
# One rule set, instantiated once per VARIANT (build/VARIANT/...):
#
#   rel    release: -O2, -fPIC, no test hooks; libferry.so, the programs,
#          the demos and the benchmarks (`make`, `make install`, `make bench`)
#   asan   ASan+UBSan with the test hooks: the suite (`make test`)
#   vg     the same tests unsanitized, for valgrind (`make valgrind`)
#   fuzz   clang, libFuzzer's coverage under ASan+UBSan (`make fuzz`)
#   cov    the tests with --coverage, unsanitized (`make coverage`)
#
# Each differs only in its compiler, its flags and how it links (CC_V,
# CFLAGS_V, LDFLAGS_V below). Any product of any variant can be built by
# its path, e.g. `make build/vg/ferry-relay`.
#
# Header dependencies come from the compiler (-MMD -MP: build/V/x.d beside
# build/V/x.o), so editing a test header rebuilds the tests that include
# it and nothing else. An object without its .d (new, or built before
# there were any) is rebuilt once: the .d is a prerequisite, named as a
# target without a recipe, which make counts as just changed when missing.
# clang writes the .d after the .o, so the .o is touched after both.
VARIANTS = rel asan vg fuzz cov
ALL_C    = $(wildcard lib/*.c common/*.c daemon/*.c reconciler/*.c tests/*.c tests/harness/*.c \
                      tests/fuzz/*.c bench/*.c examples/*.c)
DEPFILES = $(foreach v,$(VARIANTS),$(ALL_C:%.c=build/$(v)/%.d) build/$(v)/tests/relay_sched_test.d build/$(v)/tests/consume_plan_test.d)

# clang, for libFuzzer: the library and the programs' parts instrumented
# for coverage (fuzzer-no-link) under ASan+UBSan; each target links
# libFuzzer's main. clang has no -Wformat-truncation to turn off.
FUZZ_CC     = clang
FUZZ_FLAGS  = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer
FUZZ_CFLAGS = $(filter-out -Wno-format-truncation,$(BASE_CFLAGS)) -O1 $(FUZZ_FLAGS)

CC_rel       = $(CC)
CFLAGS_rel   = $(REL_CFLAGS)
LDFLAGS_rel  =
CC_asan      = $(CC)
CFLAGS_asan  = $(ASAN_CFLAGS)
LDFLAGS_asan = $(ASAN_FLAGS)
CC_vg        = $(CC)
CFLAGS_vg    = $(VG_CFLAGS)
LDFLAGS_vg   =
CC_cov       = $(CC)
CFLAGS_cov   = $(BASE_CFLAGS) -O0 --coverage $(TEST_HOOKS)
LDFLAGS_cov  = --coverage
CC_fuzz      = $(FUZZ_CC)
CFLAGS_fuzz  = $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link
LDFLAGS_fuzz = $(FUZZ_FLAGS)

# What a test, a demo or a benchmark links besides its own objects: the
# programs' parts and the library, in link order.
PARTS = libreconcile.a librelay.a libcommon.a libferry.a

define VARIANT_RULES
build/$(1)/%.o: %.c build/$(1)/%.d
	@mkdir -p $$(@D)
	$$(CC_$(1)) $$(CFLAGS_$(1)) -DFERRY_BUILDING -MMD -MP -c $$< -o $$@
	@touch $$@
build/$(1)/gen/migrations.o: $$(GEN) lib/internal.h
	@mkdir -p $$(@D)
	$$(CC_$(1)) $$(CFLAGS_$(1)) -DFERRY_BUILDING -c $$< -o $$@

build/$(1)/libferry.a: $$(LIB_SRC:%.c=build/$(1)/%.o) build/$(1)/gen/migrations.o
build/$(1)/libcommon.a: $$(COMMON_SRC:%.c=build/$(1)/%.o)
build/$(1)/librelay.a: $$(RELAYLIB_SRC:%.c=build/$(1)/%.o)
build/$(1)/libreconcile.a: $$(RECONCILELIB_SRC:%.c=build/$(1)/%.o)
build/$(1)/libfuzzparts.a: $$(FUZZ_PARTS_SRC:%.c=build/$(1)/%.o)
build/$(1)/libferry.a build/$(1)/libcommon.a build/$(1)/librelay.a build/$(1)/libreconcile.a \
build/$(1)/libfuzzparts.a:
	rm -f $$@
	ar rcs $$@ $$^

build/$(1)/ferry-relay: build/$(1)/daemon/main.o build/$(1)/librelay.a build/$(1)/libcommon.a \
                        build/$(1)/libferry.a
	$$(CC_$(1)) $$(LDFLAGS_$(1)) -o $$@ $$^ $$(DAEMON_LIBS)
# The reconciler links common/, never the relay (tests/install_check.sh).
build/$(1)/ferry-reconcile: build/$(1)/reconciler/main.o build/$(1)/libreconcile.a \
                            build/$(1)/libcommon.a build/$(1)/libferry.a
	$$(CC_$(1)) $$(LDFLAGS_$(1)) -o $$@ $$^ $$(DAEMON_LIBS)

build/$(1)/tests/test_%: build/$(1)/tests/test_%.o $$(TESTUTIL:%.c=build/$(1)/%.o) \
                         $$(HARNESS:%.c=build/$(1)/%.o) $$(PARTS:%=build/$(1)/%)
	$$(CC_$(1)) $$(LDFLAGS_$(1)) -o $$@ $$^ $$(TEST_LIBS)
build/$(1)/tests/pgtmp_selftest: build/$(1)/tests/harness/pgtmp_selftest.o \
                                 build/$(1)/tests/harness/pgtmp.o
	$$(CC_$(1)) $$(LDFLAGS_$(1)) -o $$@ $$^ $$(TEST_LIBS)
# The relay simulator links the scheduler built with its deliberately
# broken variants (-DFERRY_SCHED_TEST); the relay never has them.
build/$(1)/tests/relay_sched_test.o: daemon/relay_sched.c build/$(1)/tests/relay_sched_test.d
	@mkdir -p $$(@D)
	$$(CC_$(1)) $$(CFLAGS_$(1)) -DFERRY_BUILDING -DFERRY_SCHED_TEST -MMD -MP -c $$< -o $$@
	@touch $$@
build/$(1)/tests/test_relay_sim.o: tests/test_relay_sim.c build/$(1)/tests/test_relay_sim.d
	@mkdir -p $$(@D)
	$$(CC_$(1)) $$(CFLAGS_$(1)) -DFERRY_BUILDING -DFERRY_SCHED_TEST -MMD -MP -c $$< -o $$@
	@touch $$@
build/$(1)/tests/test_relay_sim: build/$(1)/tests/test_relay_sim.o build/$(1)/tests/relay_sched_test.o
	$$(CC_$(1)) $$(LDFLAGS_$(1)) -o $$@ $$^ $$(TEST_LIBS)
# Likewise the consumer's batch planner (-DFERRY_CPLAN_TEST).
build/$(1)/tests/consume_plan_test.o: lib/consume_plan.c build/$(1)/tests/consume_plan_test.d
	@mkdir -p $$(@D)
	$$(CC_$(1)) $$(CFLAGS_$(1)) -DFERRY_BUILDING -DFERRY_CPLAN_TEST -MMD -MP -c $$< -o $$@
	@touch $$@
build/$(1)/tests/test_consume_sim.o: tests/test_consume_sim.c build/$(1)/tests/test_consume_sim.d
	@mkdir -p $$(@D)
	$$(CC_$(1)) $$(CFLAGS_$(1)) -DFERRY_BUILDING -DFERRY_CPLAN_TEST -MMD -MP -c $$< -o $$@
	@touch $$@
build/$(1)/tests/test_consume_sim: build/$(1)/tests/test_consume_sim.o build/$(1)/tests/consume_plan_test.o
	$$(CC_$(1)) $$(LDFLAGS_$(1)) -o $$@ $$^ $$(TEST_LIBS)

# The demos and the benchmarks: their own objects, the harness that starts
# PostgreSQL and the broker, the relay's parts and the library.
build/$(1)/bench-%: build/$(1)/bench/bench_%.o build/$(1)/bench/benchutil.o \
                    $$(HARNESS:%.c=build/$(1)/%.o) $$(PARTS:%=build/$(1)/%)
	$$(CC_$(1)) $$(LDFLAGS_$(1)) -o $$@ $$^ $$(DAEMON_LIBS)
build/$(1)/%-demo: build/$(1)/examples/%_demo.o build/$(1)/examples/narrate.o \
                   $$(HARNESS:%.c=build/$(1)/%.o) $$(PARTS:%=build/$(1)/%)
	$$(CC_$(1)) $$(LDFLAGS_$(1)) -o $$@ $$^ $$(DAEMON_LIBS)
# The account service links libferry alone, as a user's service would.
build/$(1)/account-service: build/$(1)/examples/account_service.o build/$(1)/libferry.a
	$$(CC_$(1)) $$(LDFLAGS_$(1)) -o $$@ $$^ $$(PKG_LIBS) -pthread

build/$(1)/fuzz_%: build/$(1)/tests/fuzz/fuzz_%.o build/$(1)/libfuzzparts.a build/$(1)/libferry.a
	$$(CC_$(1)) -fsanitize=fuzzer $$(LDFLAGS_$(1)) -o $$@ $$^ $$(TEST_LIBS)
endef
$(foreach v,$(VARIANTS),$(eval $(call VARIANT_RULES,$(v))))

# The shared library: the release variant only (-fPIC).
build/rel/libferry.so.$(VERSION): $(REL_LIB_OBJ)
	$(CC) -shared -Wl,-soname,libferry.so.$(SOMAJOR) -Wl,--no-undefined \
	    -o $@ $^ $(PKG_LIBS)
build/rel/libferry.so: build/rel/libferry.so.$(VERSION)
	ln -sf libferry.so.$(VERSION) build/rel/libferry.so.$(SOMAJOR)
	ln -sf libferry.so.$(VERSION) $@

$(DEPFILES):
-include $(wildcard $(DEPFILES))

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
