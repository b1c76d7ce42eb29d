#!/usr/bin/env bash
# System packages some tests and benchmarks need: redis-server (the Redis door's
# benchmark baseline) and chromium (the web view's browser test). Idempotent: installs
# only what is missing, and only as root with apt-get; elsewhere it says what is missing
# and the tests that need it skip loudly (or fail under CAS_TEST_DISALLOW_SKIP=1).
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_system: missing ${need[*]} (not root or no apt-get): tests that need them will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# A failed install (no network) is reported, not fatal: the tests that need the package
# then skip loudly, which CI (CAS_TEST_DISALLOW_SKIP=1) counts as a failure.
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
    echo "setup_system: could not install ${need[*]}: tests that need them will skip" >&2
fi
