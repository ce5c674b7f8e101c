#!/usr/bin/env bash
# Start a throwaway single-node Ceph cluster (1 mon, 1 mgr, 1 memstore OSD) on
# 127.0.0.1 with cephx, no systemd. Used by nubo-storage's tests.
#
# Usage: [CEPH_ADDR=10.x.y.z] scripts/ceph-up.sh DIR
#   CEPH_ADDR: the IPv4 address the mon/mgr/OSD bind to (default 127.0.0.1);
#   tests whose clients live in other network namespaces pass an address on
#   their nbt underlay bridge.
#   DIR must not exist or be empty. Afterwards: export CEPH_CONF=DIR/ceph.conf
#   (ceph, rbd, librados and qemu all read it); the admin keyring is DIR/keyring.
# Stop with: scripts/ceph-down.sh DIR
#
# The mon ports (3300/6789) are fixed, so only one such cluster runs per host:
# this script waits (CEPH_LOCK_WAIT seconds, default 600) for an exclusive flock
# on /run/nubo-ceph.lock. A holder process started here keeps the lock for the
# cluster's lifetime (its pid is in DIR/run/lock-holder.pid); ceph-down.sh ends it.
#
# Packages: ceph-mon ceph-mgr ceph-osd ceph-common (Debian 12, Ceph 16.2).
set -euo pipefail

DIR=${1:?usage: $0 DIR}
LOCK=${NUBO_CEPH_LOCK:-/run/nubo-ceph.lock}
ADDR=${CEPH_ADDR:-127.0.0.1}
[[ $ADDR =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "ceph-up: CEPH_ADDR=$ADDR is not an IPv4 address" >&2; exit 2; }
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
T0=$(now_ms)
ts() { local d=$(($(now_ms) - T0)); printf '[%3d.%03ds] %s\n' $((d / 1000)) $((d % 1000)) "$*"; }
# wait_for DESC CMD...: retry every 0.25 s, give up after ${CEPH_WAIT:-120} s
wait_for() {
  local desc=$1
  shift
  local end=$(($(now_ms) + ${CEPH_WAIT:-120} * 1000))
  until "$@" >/dev/null 2>&1; do
    if (($(now_ms) > end)); then
      echo "ceph-up: timeout waiting for $desc (${CEPH_WAIT:-120} s)" >&2
      exit 1
    fi
    sleep 0.25
  done
}

for bin in ceph-mon ceph-mgr ceph-osd ceph ceph-authtool monmaptool rbd flock; do
  command -v "$bin" >/dev/null || { echo "ceph-up: $bin not found (install ceph-mon ceph-mgr ceph-osd ceph-common)" >&2; exit 2; }
done
if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then
  echo "ceph-up: $DIR is not empty; run ceph-down.sh $DIR first" >&2
  exit 1
fi

# One cluster per host: take the lock, then hand it to a holder process that
# lives until ceph-down.sh (daemons started below inherit the fd as well, so
# the lock also stays held while any of them still runs).
exec 9>"$LOCK"
if ! flock -w "${CEPH_LOCK_WAIT:-600}" 9; then
  echo "ceph-up: another throwaway cluster holds $LOCK; stop it with ceph-down.sh" >&2
  exit 1
fi
ts "lock $LOCK taken"
mkdir -p "$DIR"/{run,log,mon/ceph-a,mgr/ceph-x}
DIR=$(cd "$DIR" && pwd)
setsid sleep infinity </dev/null >/dev/null 2>&1 &
echo $! >"$DIR/run/lock-holder.pid"
exec 9>&-
# From here on a failure must not leave daemons behind.
# The daemons' log tails are printed before ceph-down.sh removes DIR: they
# say why a daemon did not come up.
log_tails() {
  local f
  for f in "$DIR"/log/*.log; do
    [ -s "$f" ] || continue
    echo "---- last lines of $f"
    tail -n 15 "$f"
  done
}
failed_at=""
trap 'failed_at="line $LINENO: $BASH_COMMAND"' ERR
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "ceph-up: failed (rc=$rc${failed_at:+, at $failed_at}), stopping" >&2; log_tails >&2; "$(dirname "$0")/ceph-down.sh" "$DIR" >&2 || true; fi' EXIT

FSID=$(cat /proc/sys/kernel/random/uuid)
CONF=$DIR/ceph.conf
export CEPH_CONF=$CONF
cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon initial members = a
mon host = v2:$ADDR:3300,v1:$ADDR:6789
public addr = $ADDR
public network = $ADDR/32
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $DIR/keyring
run dir = $DIR/run
admin socket = $DIR/run/\$name.\$pid.asok
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
mon data = $DIR/mon/\$cluster-\$id
mgr data = $DIR/mgr/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
mgr initial modules =
mgr stats period = 1
mon mgr digest period = 1
osd objectstore = memstore
memstore device bytes = 4294967296
osd memory target = 1073741824
osd max object name len = 256
osd max object namespace len = 64
[mon]
keyring = \$mon_data/keyring
[mgr]
keyring = \$mgr_data/keyring
admin socket = $DIR/run/\$name.asok
[osd]
keyring = \$osd_data/keyring
admin socket = $DIR/run/\$name.asok
EOF

ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/keyring" >/dev/null

monmaptool --create --fsid "$FSID" --addv a "[v2:$ADDR:3300,v1:$ADDR:6789]" "$DIR/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring"
ceph-mon -i a
ts "mon started"
wait_for mon timeout 10 ceph mon stat
ceph config set mon auth_allow_insecure_global_id_reclaim false >/dev/null

ceph auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
  -o "$DIR/mgr/ceph-x/keyring"
ceph-mgr -i x
ts "mgr started"

OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_KEY=$(ceph-authtool --gen-print-key)
ID=$(echo "{\"cephx_secret\": \"$OSD_KEY\"}" | ceph osd new "$OSD_UUID" -i -)
mkdir -p "$DIR/osd/ceph-$ID"
ceph-authtool --create-keyring "$DIR/osd/ceph-$ID/keyring" --name "osd.$ID" --add-key "$OSD_KEY" >/dev/null
ceph-osd -i "$ID" --mkfs --osd-uuid "$OSD_UUID" >"$DIR/log/osd-mkfs.log" 2>&1
ceph-osd -i "$ID"
ts "osd.$ID started"
wait_for osd-up bash -c "ceph osd dump -f json | grep -q '\"up\":1'"
ts "osd.$ID up"

ceph osd pool create rbd 8 8 >/dev/null 2>&1
rbd pool init rbd
wait_for pgs-clean bash -c "ceph pg stat | grep -Eq '^([0-9]+) pgs: \\1 active\\+clean;'"
wait_for mgr bash -c "ceph mgr stat -f json | grep -q '\"available\": *true'"
ts "cluster ready ($(ceph pg stat)): export CEPH_CONF=$CONF"
