#!/usr/bin/env bash
# Installs the Debian 12 packages nubo's daemons, demo and test suite need.
# Idempotent; safe to run on every CI run.
set -euo pipefail

PACKAGES=(
  # state store
  etcd-server etcd-client
  # gRPC code generation (protoc + well-known types, needed by etcd-client too)
  protobuf-compiler libprotobuf-dev
  # data path: nftables, netlink tools for tests, real DHCP/HTTP clients
  # (libnftables-dev: nubo-firewall links libnftables and applies in-process)
  nftables libnftables-dev iproute2 busybox-static isc-dhcp-client netcat-openbsd curl
  tcpdump iputils-ping iperf3 procps psmisc
  # compute: libvirt + QEMU (TCG where KVM cannot run guests), test guest build
  # (libxml2-utils: xmllint, which virt-xml-validate runs to check domain XML)
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev cpio libxml2-utils
  # storage: Ceph RBD (nubo-storage dlopens librados/librbd from ceph-common's deps), QEMU rbd driver
  ceph-mon ceph-mgr ceph-osd ceph-common librados2 librbd1 qemu-block-extra
  # certificates (scripts/make-certs.sh, the TLS tests)
  openssl
  # build
  pkg-config build-essential
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  # The whole list, not only the missing ones: apt resolves them together, so
  # installing one package can never remove another of the list (a machine
  # with a newer qemu-utils from backports lost it to qemu-system-x86 7.2).
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${PACKAGES[@]}"
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      { echo "error: package $p is not installed after apt-get install" >&2; exit 1; }
  done
fi

# libvirt must never create its default NAT network (virbr0) on this host.
rm -f /etc/libvirt/qemu/networks/autostart/*.xml 2>/dev/null || true

# Debian starts etcd as a system service on install; nubo's tests and demo
# run their own etcd on free ports, the packaged one is not needed.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
