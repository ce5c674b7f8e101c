#!/usr/bin/env bash
# For scripts/fresh-machine.sh --services: plays the distribution's own
# services that apt starts where systemd is PID 1 — etcd on its default port
# 2379 with /var/lib/etcd, libvirtd and virtlogd on /run/libvirt — and
# afterwards checks that the demo and the suite left them as they were
# (same PIDs, still answering).
#
#   fresh-services.sh start | check
set -euo pipefail
STATE=/run/nubo-fresh-services
case "${1:-}" in
  start)
    mkdir -p "$STATE" /var/lib/etcd /run/libvirt
    setsid etcd --name default --data-dir /var/lib/etcd/default \
      --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
      >"$STATE/etcd.log" 2>&1 </dev/null &
    echo $! >"$STATE/etcd.pid"
    virtlogd -d -p /run/libvirt/virtlogd.pid
    libvirtd -d -p /run/libvirt/libvirtd.pid
    for _ in $(seq 1 100); do
      etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 &&
        virsh -c qemu:///system version >/dev/null 2>&1 && break
      sleep 0.2
    done
    etcdctl --endpoints=http://127.0.0.1:2379 put /fresh-services/marker before >/dev/null
    cp /run/libvirt/libvirtd.pid "$STATE/libvirtd.pid"
    cp /run/libvirt/virtlogd.pid "$STATE/virtlogd.pid"
    echo "distribution services up: etcd $(cat "$STATE/etcd.pid"), libvirtd $(cat "$STATE/libvirtd.pid"), virtlogd $(cat "$STATE/virtlogd.pid")"
    ;;
  check)
    status=0
    for s in etcd libvirtd virtlogd; do
      pid=$(cat "$STATE/$s.pid")
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "error: the distribution's $s (pid $pid) is no longer running" >&2
        status=1
      fi
    done
    [[ "$(etcdctl --endpoints=http://127.0.0.1:2379 get --print-value-only /fresh-services/marker 2>/dev/null)" == before ]] ||
      { echo "error: the distribution's etcd does not answer with its data" >&2; status=1; }
    virsh -c qemu:///system version >/dev/null 2>&1 ||
      { echo "error: the distribution's libvirtd does not answer on /run/libvirt" >&2; status=1; }
    for s in etcd libvirtd virtlogd; do kill "$(cat "$STATE/$s.pid")" 2>/dev/null || true; done
    ((status == 0)) && echo "distribution services untouched: etcd, libvirtd, virtlogd still running and answering"
    exit $status
    ;;
  *) echo "usage: $0 start|check" >&2; exit 2 ;;
esac
