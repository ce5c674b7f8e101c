#!/usr/bin/env bash
# A working demo cloud on this one machine (Debian 12, as root):
# installs what it needs, builds nubo, builds the tiny test guest, starts
# etcd, a coordinator and two simulated hypervisors (network namespaces, each
# with its own libvirtd and nubo-agent), and boots two VMs that get their
# addresses from nubo's DHCP, read nubo's metadata and ping each other across
# VXLAN. Ctrl-C stops it and removes everything it created.
#
#   sudo ./scripts/demo.sh          # keep running until Ctrl-C
#   sudo ./scripts/demo.sh --once   # boot, show, tear down (smoke test)
#
# The demo coordinator runs in development mode (--insecure --auth none:
# plain text, no tokens) on this machine only; a real deployment serves TLS
# with tokens (docs/operator-guide.md, "Security").
set -euo pipefail
cd "$(dirname "$0")/.."
# The toolchain of the user who ran `sudo` (sudo drops ~/.cargo/bin).
. scripts/toolchain.sh

if [[ $EUID -ne 0 ]]; then
  echo "error: the demo creates network namespaces, bridges and VMs: run it as root" >&2
  exit 1
fi

./scripts/deps.sh
echo "==> building nubo"
cargo build --workspace --bins --quiet
echo "==> building the test guest (kernel from Debian's linux-image-cloud-amd64 + busybox initramfs)"
./scripts/build-test-guest.sh
exec ./target/debug/nubo-demo "$@"
