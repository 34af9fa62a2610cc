#!/bin/sh
# install-deps.sh - install the Debian packages grwhd needs to build and test.
#   scripts/install-deps.sh          build + test packages
#   scripts/install-deps.sh --bench  also the peers of the benchmark
# Installs only what is missing; safe to run again.
set -eu

pkgs="build-essential pkg-config liblua5.4-dev libmicrohttpd-dev
libgnutls28-dev libcjson-dev libsqlite3-dev libcurl4-gnutls-dev check
gnutls-bin openssl curl python3 sqlite3 procps shellcheck valgrind"
if [ "${1:-}" = "--bench" ]; then
    pkgs="$pkgs nginx libnginx-mod-http-lua lua-cjson webhook wrk iproute2"
fi

missing=""
for p in $pkgs; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case $status in
    *"install ok installed"*) ;;
    *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "grwhd: missing Debian packages:$missing" >&2
    echo "grwhd: run as root, or: sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "grwhd: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing >&2
