#!/usr/bin/env bash
# The whole nubo test suite: unit tests, real-etcd integration tests and the
# end-to-end tests in network namespaces. Needs root (namespaces, nftables).
#
#   sudo ./scripts/test.sh            # everything
#   sudo ./scripts/test.sh dhcp       # only tests whose name contains "dhcp" (args go to `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."
# The toolchain of the user who ran `sudo` (sudo drops ~/.cargo/bin).
. scripts/toolchain.sh

if [[ $EUID -ne 0 ]]; then
  echo "error: the suite creates network namespaces and nftables tables: run it as root" >&2
  exit 1
fi

./scripts/deps.sh

if [[ -n ${NUBO_TEST_ALLOW_SKIP:-} ]]; then
  echo "warning: NUBO_TEST_ALLOW_SKIP=$NUBO_TEST_ALLOW_SKIP: tests needing those components may pass without running (CI never sets it)" >&2
fi

echo "== build"
cargo build --workspace --bins --quiet

status=0
echo "== lint (rustfmt, clippy -D warnings)"
cargo fmt --all -- --check || { echo "error: cargo fmt --all would change files" >&2; status=1; }
cargo clippy --workspace --all-targets --quiet -- -D warnings || status=1

echo "== tests"
# Test binaries run one after the other; inside each, tests run in parallel
# threads. The end-to-end tests start many processes: cap the threads so a
# 2-core machine is not oversubscribed.
cargo test --workspace --no-fail-fast "$@" -- --test-threads="${NUBO_TEST_THREADS:-2}" || status=$?

echo "== leftovers"
left_ns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^nbt' || true)
left_links=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^nbt' || true)
if [[ -n "$left_ns$left_links" ]]; then
  echo "error: tests left behind namespaces/links: $left_ns $left_links" >&2
  status=1
else
  echo "none"
fi
exit $status
