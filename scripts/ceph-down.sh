#!/usr/bin/env bash
# Stop a cluster started by ceph-up.sh DIR: kill its daemons by the pids in
# DIR/run (OSD first: it waits for a dead mon otherwise), release the host lock
# (the holder process), then remove DIR. KEEP_DATA=1 keeps DIR for post-mortems.
# Usage: scripts/ceph-down.sh DIR
set -uo pipefail
DIR=${1:?usage: $0 DIR}
[ -d "$DIR" ] || exit 0
# alive = exists and not a zombie (PID 1 on some VMs reaps orphans lazily)
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }
for f in "$DIR"/run/osd.*.pid "$DIR"/run/mgr.*.pid "$DIR"/run/mon.*.pid "$DIR"/run/lock-holder.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  [[ $pid =~ ^[0-9]+$ ]] || continue
  kill -TERM "$pid" 2>/dev/null || continue
  for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.05; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  echo "stopped $(basename "$f" .pid) (pid $pid)"
done
[ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$DIR"
