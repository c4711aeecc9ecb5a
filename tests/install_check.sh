#!/bin/sh
# install_check.sh — `make install PREFIX=…` installs what a user needs: the
# header, both libraries, ferry.pc, the programs, the SQL and the saga
# schema; a program built against it with pkg-config alone links and runs,
# statically and shared (no LD_LIBRARY_PATH: ferry.pc has the rpath);
# `make uninstall` takes it all away again. What is installed holds no test
# hook (Makefile, TEST_HOOKS), while the test build does.
set -eu
tmp=$(mktemp -d /tmp/ferry-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
make --no-print-directory -s install PREFIX="$tmp/prefix" >/dev/null
for f in include/ferry.h lib/libferry.a lib/libferry.so lib/libferry.so.0 \
         lib/pkgconfig/ferry.pc bin/ferry-relay bin/ferry-reconcile share/ferry/001_ferry.sql \
         share/ferry/saga.schema.json share/ferry/relay.yaml share/ferry/reconcile.yaml \
         share/ferry/systemd/ferry-relay@.service share/ferry/systemd/ferry-reconcile.service \
         share/ferry/LICENSE share/ferry/CHANGELOG.md; do
    [ -e "$tmp/prefix/$f" ] || { echo "install_check: missing $f" >&2; exit 1; }
done
# The units name the installed programs and pass systemd-analyze verify,
# which says what it finds wrong on stderr, often with exit 0 (an unknown
# key, a bad value): any word from it fails. An instance of the template
# is verified as well. scripts/deps.sh installs systemd.
if command -v systemd-analyze >/dev/null; then
    units="$tmp/prefix/share/ferry/systemd"
    grep -q "ExecStart=$tmp/prefix/bin/ferry-relay run" "$units/ferry-relay@.service" ||
        { echo "install_check: ferry-relay@.service does not run the installed ferry-relay" >&2; exit 1; }
    cp "$units/ferry-relay@.service" "$tmp/ferry-relay@orders.service"
    if ! out=$(systemd-analyze verify "$units/ferry-relay@.service" "$tmp/ferry-relay@orders.service" \
                   "$units/ferry-reconcile.service" 2>&1) || [ -n "$out" ]; then
        echo "install_check: systemd-analyze verify:" >&2
        echo "$out" >&2
        exit 1
    fi
    # The hardening the README promises (a dynamic user, no capabilities,
    # a read-only file system, Unix and IP sockets only, @system-service):
    # systemd's own exposure score, 0 (locked down) to 10, at most 2.0 for
    # each (without the block: 9.6, "UNSAFE").
    for u in "$tmp/ferry-relay@orders.service" "$units/ferry-reconcile.service"; do
        if ! out=$(systemd-analyze security --offline=yes --threshold=20 "$u" 2>&1); then
            echo "install_check: systemd-analyze security: $(basename "$u") is exposed:" >&2
            echo "$out" | grep -E '✗|Overall' >&2
            exit 1
        fi
    done
else
    echo "install_check: SKIPPED systemd-analyze verify: no systemd-analyze on this machine" >&2
fi
cat > "$tmp/app.c" <<'C'
#include <ferry.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
    ferry_uuid id;
    char text[FERRY_UUID_STRING_SIZE];
    if (ferry_uuid_v7(&id) != FERRY_OK)
        return 1;
    ferry_uuid_format(&id, text);
    printf("%s %s\n", ferry_version(), text);
    return strcmp(ferry_version(), FERRY_VERSION_STRING) != 0;
}
C
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
cc "$tmp/app.c" $(pkg-config --cflags --libs ferry) -o "$tmp/app-shared"
# libferry.a with the shared libpq and jansson: Debian ships no static libpq.
cc "$tmp/app.c" $(pkg-config --cflags ferry) "$tmp/prefix/lib/libferry.a" \
    $(pkg-config --libs libpq jansson) -o "$tmp/app-static"
env -u LD_LIBRARY_PATH "$tmp/app-shared" >/dev/null
# The README's emit example compiles against what was installed, warnings
# as errors: its statements, after its #include, as the body of a function.
awk '/^## Emitting a message/ { on = 1 } on && /^```c$/ { code = 1; next }
     code && /^```$/ { exit } code { print }' README.md > "$tmp/readme.txt"
grep -q ferry_emit "$tmp/readme.txt" || { echo "install_check: no emit example in README.md" >&2; exit 1; }
{ grep '^#include' "$tmp/readme.txt"
  echo '#include <stdio.h>'
  echo 'void example(PGconn *conn);'
  echo 'void example(PGconn *conn) {'
  grep -v '^#include' "$tmp/readme.txt"
  echo '}'
  echo 'int main(void) { return 0; }'; } > "$tmp/readme.c"
cc -std=c11 -Wall -Wextra -Werror "$tmp/readme.c" $(pkg-config --cflags --libs ferry) -o "$tmp/readme" ||
    { echo "install_check: README.md's emit example does not compile" >&2; exit 1; }
"$tmp/app-static" >/dev/null
"$tmp/prefix/bin/ferry-relay" --version >/dev/null
"$tmp/prefix/bin/ferry-reconcile" --version >/dev/null
# Only the API is exported from the shared library.
if nm -D --defined-only "$tmp/prefix/lib/libferry.so" | awk '{print $3}' | grep -v '^ferry_' | grep -q .; then
    echo "install_check: libferry.so exports symbols outside ferry_*" >&2
    exit 1
fi
# A library's or program's global symbols, one a line.
globals() { nm -g --defined-only "$1" | awk 'NF == 3 && $2 ~ /[TDBR]/ {print $3}' | sort -u; }
# The static library cannot hide its internals, so they carry the internal
# prefix (ferry__, README "Names") and clash with no program's names.
outside=$(globals "$tmp/prefix/lib/libferry.a" | grep -v '^ferry_' || true)
if [ -n "$outside" ]; then
    echo "install_check: libferry.a defines globals outside ferry_*:" >&2
    echo "$outside" >&2
    exit 1
fi
# ... and exactly the functions ferry.h declares FERRY_API: nothing internal
# (ferry__*, lib/internal.h) and nothing it promises missing.
sed -n 's/^FERRY_API[^(]*[^a-z0-9_]\(ferry_[a-z0-9_]*\)(.*/\1/p' "$tmp/prefix/include/ferry.h" |
    sort -u > "$tmp/api.syms"
nm -D --defined-only "$tmp/prefix/lib/libferry.so" | awk '$2 == "T" {print $3}' | sort -u \
    > "$tmp/exported.syms"
if ! cmp -s "$tmp/api.syms" "$tmp/exported.syms" || [ ! -s "$tmp/api.syms" ]; then
    echo "install_check: libferry.so's exports differ from ferry.h's FERRY_API functions:" >&2
    diff "$tmp/api.syms" "$tmp/exported.syms" >&2 || true
    exit 1
fi
# A deprecated name (CHANGELOG.md) still links, and its caller's compiler
# names what replaces it.
printf '#include <ferry.h>\nint main(void) { ferry_saga_def_free(NULL); return 0; }\n' \
    > "$tmp/old.c"
if cc -Werror=deprecated-declarations "$tmp/old.c" $(pkg-config --cflags --libs ferry) \
        -o "$tmp/old" 2>"$tmp/old.err"; then
    echo "install_check: ferry_saga_def_free is not marked deprecated" >&2
    exit 1
fi
grep -q 'use ferry_saga_def_destroy' "$tmp/old.err" ||
    { echo "install_check: the deprecation does not name ferry_saga_def_destroy" >&2; exit 1; }
cc -Wno-deprecated-declarations "$tmp/old.c" $(pkg-config --cflags --libs ferry) -o "$tmp/old"
env -u LD_LIBRARY_PATH "$tmp/old"
# Code only the programs use lives in common/ (the lease protocol, the HTTP
# server behind --metrics, Prometheus text) and is linked by them, never
# into the library services link; the reconciler links common/, not the
# relay; and the reconciler's report talks to no database.
for lib in build/rel/libcommon.a build/rel/librelay.a build/rel/reconciler/report.o; do
    [ -e "$lib" ] || { echo "install_check: no $lib (make)" >&2; exit 1; }
done
found=$(nm "$tmp/prefix/lib/libferry.so" "$tmp/prefix/lib/libferry.a" 2>/dev/null | awk '{print $NF}' |
        grep -Fx -f "$(globals build/rel/libcommon.a > "$tmp/common.syms"; echo "$tmp/common.syms")" |
        sort -u | tr '\n' ' ')
if [ -n "$found" ]; then
    echo "install_check: libferry holds the programs' common code: $found" >&2
    exit 1
fi
globals build/rel/librelay.a > "$tmp/relay.syms"
found=$(nm "$tmp/prefix/bin/ferry-reconcile" | awk '{print $NF}' | grep -Fx -f "$tmp/relay.syms" |
        sort -u | tr '\n' ' ')
if [ -n "$found" ]; then
    echo "install_check: ferry-reconcile links the relay: $found" >&2
    exit 1
fi
if nm -u build/rel/reconciler/report.o | grep -q ' PQ'; then
    echo "install_check: reconciler/report.c calls libpq" >&2
    exit 1
fi
# No test hook ships. The hooks are env vars named FERRY_<PART>_TEST_<WHAT>
# (lib/consume.c, daemon/relay_kafka.c), compiled only with
# -DFERRY_TEST_HOOKS into build/asan and build/vg: the installed library and
# programs must not hold such a name, nor import librdkafka's test API, and
# libferry.so no raise() (the consumer's hook is a raise(SIGKILL)).
hook_names='FERRY_[A-Z]*_TEST_[A-Z_]*'
for f in lib/libferry.so lib/libferry.a bin/ferry-relay bin/ferry-reconcile; do
    found=$(grep -a -o "$hook_names" "$tmp/prefix/$f" | sort -u | tr '\n' ' ')
    if [ -n "$found" ]; then
        echo "install_check: $f holds test hooks: $found" >&2
        exit 1
    fi
done
for f in lib/libferry.so bin/ferry-relay bin/ferry-reconcile; do
    if nm -D --undefined-only "$tmp/prefix/$f" | grep -q 'rd_kafka_test_'; then
        echo "install_check: $f calls librdkafka's test API" >&2
        exit 1
    fi
done
if nm -D --undefined-only "$tmp/prefix/lib/libferry.so" | grep -qw 'raise'; then
    echo "install_check: libferry.so calls raise()" >&2
    exit 1
fi
# ... and the test build has them, so the search above would see a hook.
for want in build/asan/libferry.a:FERRY_CONSUMER_TEST_KILL_AFTER_COMMIT \
            build/asan/ferry-relay:FERRY_RELAY_TEST_FATAL_AFTER; do
    f=${want%%:*} name=${want#*:}
    [ -e "$f" ] || { echo "install_check: no $f (build the tests: make test)" >&2; exit 1; }
    if ! grep -a -o "$hook_names" "$f" | grep -qx "$name"; then
        echo "install_check: the test build's $f lacks the hook $name" >&2
        exit 1
    fi
done
make --no-print-directory -s uninstall PREFIX="$tmp/prefix" >/dev/null
left=$(find "$tmp/prefix" -type f -o -type l)
if [ -n "$left" ]; then
    echo "install_check: make uninstall left: $left" >&2
    exit 1
fi
echo "install_check: OK"
