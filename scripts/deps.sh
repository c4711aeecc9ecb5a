#!/bin/sh
# deps.sh [coverage] — install the Debian packages ferry needs that this
# machine lacks (and gcovr, with coverage).
#
# `make test`, `make demo`, `make bench` and `make all` call this first, so
# that on a fresh Debian 12 machine, as root, each of them just works. It
# installs nothing that is already there and runs apt-get only when
# something is missing.
set -eu

# clang and its runtime (libFuzzer, the sanitizers) build tests/fuzz/;
# --no-install-recommends would leave libclang-rt out, so it is named.
# python3-psycopg2, python3-confluent-kafka, nodejs and npm run the
# reference services in examples/python and examples/node
# (tests/test_lang_services.c, the demo); their Node modules come from
# examples/node/package-lock.json (`npm ci`, run by make).
# systemd: systemd-analyze verify checks the units (tests/install_check.sh).
packages="gcc make pkg-config libc6-dev
libpq-dev librdkafka-dev libyaml-dev libjansson-dev libmicrohttpd-dev
libcmocka-dev postgresql clang libclang-rt-14-dev
python3 python3-psycopg2 python3-confluent-kafka nodejs npm systemd"
# `sh scripts/deps.sh coverage` (make coverage): gcovr as well, which
# nothing else needs.
[ "${1:-}" = coverage ] && packages="$packages gcovr"

missing=""
for p in $packages; do
    # A Node.js from elsewhere (NodeSource's nodejs carries its own npm,
    # and conflicts with Debian's npm package) serves as well.
    case $p in
        nodejs) command -v node >/dev/null 2>&1 && continue ;;
        npm) command -v npm >/dev/null 2>&1 && continue ;;
    esac
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0

echo "deps: installing missing Debian packages:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
else
    echo "deps: not root and no sudo; install them with:" >&2
    echo "  apt-get install$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >&2
