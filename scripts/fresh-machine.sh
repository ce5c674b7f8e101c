#!/usr/bin/env bash
# Runs a command on a reproduction of a brand-new Debian 12 machine: a
# minimal Debian root made by debootstrap (nothing of nubo ever run there:
# no packages beyond minbase, empty /run and /tmp, no /run/libvirt, no
# etcd), entered with chroot in a private mount namespace, with only the
# Rust toolchain bind-mounted from this machine (as the README assumes it is
# installed) and a fresh `git clone` of this repository's HEAD (as CI runs).
# The kernel, the network namespaces it creates and the CPU are this
# machine's.
#
#   sudo ./scripts/fresh-machine.sh                  # the README: demo --once, then the suite
#   sudo ./scripts/fresh-machine.sh -- CMD...        # any command, in the clone
#   sudo ./scripts/fresh-machine.sh --after-deps -- CMD...
#        # from a root where scripts/deps.sh already ran once (cached layer):
#        # "the first thing run after deps.sh on a new machine"
#   sudo ./scripts/fresh-machine.sh --systemd ...  # the after-deps root booted with
#        # systemd as PID 1 (in a PID namespace): the distribution's etcd.service and
#        # libvirtd.service run, as apt leaves them on such a machine; afterwards
#        # they must still be active with the same main PIDs and answering
#
# The debootstrap root is cached in $NUBO_FRESH_DIR (default
# /var/tmp/nubo-fresh); every run starts from it through an overlay whose
# upper layer is thrown away, so runs never see each other's leftovers.
# A target directory for the clone's build is kept between runs
# ($NUBO_FRESH_DIR/target: build output only, no machine state) unless
# NUBO_FRESH_CLEAN_BUILD=1.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DIR=${NUBO_FRESH_DIR:-/var/tmp/nubo-fresh}
MIRROR=${NUBO_FRESH_MIRROR:-http://deb.debian.org/debian}

# The part that runs inside the private mount namespace (see the end).
if [[ ${1:-} == --inner ]]; then
  mount -t overlay overlay -o "lowerdir=$F_LOWER,upperdir=$F_UPPER,workdir=$F_WORK" "$F_ROOT"
  mount -t proc proc "$F_ROOT/proc"
  mount --rbind /sys "$F_ROOT/sys"
  mount --rbind /dev "$F_ROOT/dev"
  mount -t tmpfs tmpfs "$F_ROOT/run"
  mount -t tmpfs tmpfs "$F_ROOT/tmp"
  mkdir -p "$F_ROOT/run/netns" "$F_ROOT/root/.rustup" "$F_ROOT/root/.cargo" "$F_ROOT/root/nubo"
  # Network namespaces are the kernel's: `ip netns` inside and outside must
  # see the same ones (the leftover checks look for them).
  mount --bind /run/netns "$F_ROOT/run/netns"
  mount --bind -o ro "$F_RUSTUP" "$F_ROOT/root/.rustup"
  mount --bind "$F_CARGO" "$F_ROOT/root/.cargo"
  mount --bind "$F_CLONE" "$F_ROOT/root/nubo"
  mkdir -p "$F_ROOT/root/nubo/target"
  mount --bind "$F_TARGET" "$F_ROOT/root/nubo/target"
  cp /etc/resolv.conf "$F_ROOT/etc/resolv.conf"
  env=(HOME=/root TERM=dumb LANG=C.UTF-8
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  if [[ $F_SYSTEMD != 1 ]]; then
    exec chroot "$F_ROOT" /usr/bin/env -i "${env[@]}" bash -c "cd /root/nubo && $F_CMD"
  fi
  # systemd as PID 1 of a new PID namespace, chrooted into the root.
  umount "$F_ROOT/proc"
  unshare --pid --fork bash -c "mount -t proc proc '$F_ROOT/proc' &&
    exec chroot '$F_ROOT' /usr/bin/env -i container=nubo-fresh /lib/systemd/systemd" \
    >"$F_WORKDIR/systemd.log" 2>&1 &
  spid=
  for _ in $(seq 1 100); do
    spid=$(cat "/proc/$!/task/$!/children" 2>/dev/null | awk '{print $1}')
    [[ -n $spid ]] && break
    sleep 0.1
  done
  [[ -n $spid ]] || { echo "error: systemd did not start" >&2; cat "$F_WORKDIR/systemd.log" >&2; exit 1; }
  inside() { nsenter -t "$spid" -m -p -u -i -r -w /usr/bin/env -i "${env[@]}" "$@"; }
  # Whatever happens below, the booted root goes away with this script.
  poweroff() { inside systemctl poweroff 2>/dev/null || kill -s SIGRTMIN+4 "$spid" 2>/dev/null || true; wait || true; }
  trap poweroff EXIT
  for _ in $(seq 1 300); do
    [[ -S $F_ROOT/run/systemd/private ]] && break
    sleep 0.1
  done
  state=$(inside timeout 120 systemctl is-system-running --wait || true)
  echo "==> systemd is PID 1 in the root ($state)"
  units=(etcd.service libvirtd.service)
  pids_before=$(inside systemctl show -p MainPID --value "${units[@]}" | tr '\n' ' ')
  inside systemctl --no-pager is-active "${units[@]}" >/dev/null ||
    { echo "error: the distribution's services are not running before the test" >&2; inside systemctl --no-pager status "${units[@]}" >&2; exit 1; }
  echo "==> distribution services active: ${units[*]} (main PIDs $pids_before)"
  rc=0
  inside bash -c "cd /root/nubo && $F_CMD" || rc=$?
  pids_after=$(inside systemctl show -p MainPID --value "${units[@]}" | tr '\n' ' ')
  if ! inside systemctl --no-pager is-active "${units[@]}" >/dev/null || [[ $pids_after != "$pids_before" ]] ||
    ! inside etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 ||
    ! inside virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "error: the distribution's services were not left as they were (main PIDs $pids_before -> $pids_after)" >&2
    inside systemctl --no-pager status "${units[@]}" >&2 || true
    rc=1
  else
    echo "==> distribution services untouched: ${units[*]} active, same main PIDs, answering"
  fi
  exit $rc
fi

after_deps=0
systemd=0
while (($#)); do
  case "$1" in
    --after-deps) after_deps=1; shift ;;
    --systemd) systemd=1; after_deps=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--after-deps] [--systemd] [-- CMD...]" >&2; exit 2 ;;
  esac
done
if (($#)); then
  cmd=$(printf '%q ' "$@")
else
  cmd="./scripts/demo.sh --once && ./scripts/test.sh"
fi
[[ $EUID -eq 0 ]] || { echo "error: run as root (chroot, mounts)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "error: debootstrap not found (scripts/deps.sh installs it)" >&2; exit 1; }
RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
[[ -x $CARGO_HOME/bin/cargo ]] || { echo "error: no Rust toolchain in $CARGO_HOME" >&2; exit 1; }

mkdir -p "$DIR"
if [[ ! -f $DIR/base/.complete ]]; then
  rm -rf "$DIR/base"
  echo "==> debootstrap --variant=minbase bookworm $DIR/base"
  debootstrap --variant=minbase bookworm "$DIR/base" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 ||
    { tail -20 "$DIR/debootstrap.log" >&2; exit 1; }
  touch "$DIR/base/.complete"
fi

WORK=$(mktemp -d "$DIR/run.XXXXXX")
ROOT=$WORK/root
cleanup() {
  # Everything was mounted inside the private mount namespace of the run.
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$ROOT" "$WORK/upper" "$WORK/work" "$DIR/target"

lower=$DIR/base
if ((after_deps)); then
  # A cached layer: the base after one scripts/deps.sh (rebuilt when the
  # inventory changes).
  stamp=$(sha256sum "$REPO/scripts/inventory" "$REPO/scripts/deps.sh" | sha256sum | cut -c1-16)
  if [[ "$(cat "$DIR/deps/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    echo "==> building the after-deps layer"
    rm -rf "$DIR/deps" "$DIR/deps.work"
    mkdir -p "$DIR/deps" "$DIR/deps.work"
    NUBO_FRESH_LAYER=$DIR/deps NUBO_FRESH_LAYER_WORK=$DIR/deps.work "$0" -- ./scripts/deps.sh
    echo "$stamp" >"$DIR/deps/.stamp"
  fi
  lower=$DIR/deps:$DIR/base
fi
upper=${NUBO_FRESH_LAYER:-$WORK/upper}
work=${NUBO_FRESH_LAYER_WORK:-$WORK/work}

git clone -q "$REPO" "$WORK/clone"
echo "==> fresh clone of $(git -C "$REPO" rev-parse --short HEAD) (uncommitted changes are not in it)"

mkdir -p /run/netns
[[ ${NUBO_FRESH_CLEAN_BUILD:-0} = 1 ]] && rm -rf "${DIR:?}/target"/*
echo "==> in the fresh root: $cmd"
export F_ROOT=$ROOT F_LOWER=$lower F_UPPER=$upper F_WORK=$work F_CLONE=$WORK/clone \
  F_TARGET=$DIR/target F_RUSTUP=$RUSTUP_HOME F_CARGO=$CARGO_HOME F_SYSTEMD=$systemd F_CMD=$cmd \
  F_WORKDIR=$WORK
unshare -m --propagation private "$0" --inner
