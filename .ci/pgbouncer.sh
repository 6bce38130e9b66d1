#!/usr/bin/env bash
# Builds PgBouncer 1.24.1 from Debian's source tarball once, into a cache directory, and prints
# the binary's path. tests/pgbouncer.rs runs the cluster behind it (PSBROKER_TEST_PGBOUNCER):
# Debian bookworm ships 1.18, which cannot carry sqlx's prepared statements in transaction mode
# (that needs >= 1.21 with max_prepared_statements, docs/cluster.md "Behind PgBouncer").
set -euo pipefail
version=1.24.1
sha256=da72a3aba13072876d055a3e58dd4aba4a5de4ed6148e73033185245598fd3e0
url="http://deb.debian.org/debian/pool/main/p/pgbouncer/pgbouncer_${version}.orig.tar.gz"
prefix="${XDG_CACHE_HOME:-$HOME/.cache}/psbroker-ci/pgbouncer-$version"
bin="$prefix/bin/pgbouncer"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
# Build dependencies, installed when missing (c-ares and pandoc are optional: left out).
missing=()
command -v cc >/dev/null || missing+=(gcc libc6-dev)
command -v make >/dev/null || missing+=(make)
command -v curl >/dev/null || missing+=(curl ca-certificates)
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists libevent 2>/dev/null || missing+=(libevent-dev)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
curl -fsSL "$url" -o "$work/src.tar.gz"
echo "$sha256  $work/src.tar.gz" | sha256sum -c --quiet - >&2
tar -xzf "$work/src.tar.gz" -C "$work"
cd "$work/pgbouncer-$version"
{
  ./configure --prefix="$prefix" --without-cares --without-systemd --without-pam --without-ldap
  make -j"$(nproc)"
  make install
} >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
"$bin" --version >&2
echo "$bin"
