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
#   sudo ./scripts/fresh-machine.sh --services ...   # also start the distribution's own
#        # etcd and libvirtd first (as apt does where systemd is PID 1) and
#        # check that they are still running, untouched, afterwards
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
  script='cd /root/nubo
rc=0
if [ "$F_SERVICES" = 1 ]; then ./scripts/fresh-services.sh start || exit 1; fi
bash -c "$F_CMD" || rc=$?
if [ "$F_SERVICES" = 1 ]; then ./scripts/fresh-services.sh check || rc=1; fi
exit $rc'
  exec chroot "$F_ROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    F_SERVICES="$F_SERVICES" F_CMD="$F_CMD" bash -c "$script"
fi

after_deps=0
services=0
while (($#)); do
  case "$1" in
    --after-deps) after_deps=1; shift ;;
    --services) services=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--after-deps] [--services] [-- CMD...]" >&2; exit 2 ;;
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
  F_TARGET=$DIR/target F_RUSTUP=$RUSTUP_HOME F_CARGO=$CARGO_HOME F_SERVICES=$services F_CMD=$cmd
unshare -m --propagation private "$0" --inner
