#!/usr/bin/env bash
# Installs the Debian 12 packages that scripts/inventory declares (every
# program nubo's scripts, daemons, harness and tests run, plus the build's
# libraries), then checks that every program of the inventory resolves.
# Idempotent; run by the demo and by the test suite (so by CI) every time.
#
#   ./scripts/deps.sh           # install what is missing, then check
#   ./scripts/deps.sh --check   # only check (exit 1 naming what is missing)
#
# Services: packages are installed with a policy-rc.d that forbids starting
# services, so on a machine with systemd as PID 1 the distribution's own
# etcd, libvirtd or Ceph units are neither started nor stopped by us; a
# service that was running before keeps running. nubo's demo and tests run
# their own daemons on their own ports and directories.
set -euo pipefail
cd "$(dirname "$0")/.."
# The toolchain of the user who ran `sudo` (sudo drops ~/.cargo/bin).
. scripts/toolchain.sh
INVENTORY=scripts/inventory

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# PROGRAM PACKAGE lines; "-" programs are library-only packages; packages
# starting with "@" do not come from Debian (@toolchain: rustup).
mapfile -t PACKAGES < <(awk '!/^[[:space:]]*(#|$)/ && $2 !~ /^@/ {print $2}' "$INVENTORY" | sort -u)
mapfile -t PROGRAMS < <(awk '!/^[[:space:]]*(#|$)/ && $1 != "-" {print $1 " " $2}' "$INVENTORY")

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if ((${#missing[@]})) && ((check_only == 0)); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# scripts/deps.sh: no service starts while nubo installs packages\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  # The whole list, not only the missing ones: apt resolves them together, so
  # installing one package never removes another of the list (a machine with
  # a newer qemu-utils from backports lost it to qemu-system-x86 7.2).
  # QEMU's packages break each other across releases (qemu-utils 10 from
  # backports: "Breaks: qemu-system-common (< 1:8.0)"), and apt never
  # downgrades by itself: a machine that came with a newer qemu-utils from a
  # source it no longer lists could install nothing ("held broken
  # packages"). Every QEMU package is asked for at the version the
  # configured sources offer for qemu-system-x86, so they match.
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  wanted=()
  for p in "${PACKAGES[@]}"; do
    if [[ $p == qemu-* && -n $qemu_version && $qemu_version != "(none)" ]]; then
      have=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
      [[ -n $have && $have != "$qemu_version" ]] && echo "note: $p $have is replaced by $qemu_version (QEMU's packages must come from one release)"
      wanted+=("$p=$qemu_version")
    else
      wanted+=("$p")
    fi
  done
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends --allow-downgrades "${wanted[@]}"
  missing=()
  for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
  done
fi

# PyPI clients (@pypi:SPEC) into one virtualenv, pinned; their programs
# linked into /usr/local/bin (`openstack-python` is the virtualenv's python).
VENV=/opt/nubo/openstack-clients
mapfile -t PYPI < <(awk '!/^[[:space:]]*(#|$)/ && $2 ~ /^@pypi:/ {sub(/^@pypi:/, "", $2); print $1 " " $2}' "$INVENTORY")
if ((${#PYPI[@]})) && ((check_only == 0)); then
  specs=()
  for line in "${PYPI[@]}"; do specs+=("${line#* }"); done
  stamp="$VENV/.nubo-specs"
  if [[ ! -x $VENV/bin/python3 ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "${specs[*]}" ]]; then
    echo "installing into $VENV: ${specs[*]}"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "${specs[@]}"
    echo "${specs[*]}" >"$stamp"
  fi
  for line in "${PYPI[@]}"; do
    prog=${line%% *}
    if [[ $prog == openstack-python ]]; then
      # A wrapper, not a link: python finds its virtualenv from the path
      # it was started by.
      printf '#!/bin/sh\nexec %s/bin/python3 "$@"\n' "$VENV" >/usr/local/bin/openstack-python.tmp
      chmod 755 /usr/local/bin/openstack-python.tmp
      mv -f /usr/local/bin/openstack-python.tmp /usr/local/bin/openstack-python
    else
      ln -sf "$VENV/bin/$prog" "/usr/local/bin/$prog"
    fi
  done
fi

status=0
if ((${#missing[@]})); then
  echo "error: packages of $INVENTORY not installed: ${missing[*]}" >&2
  status=1
fi
for line in "${PROGRAMS[@]}"; do
  read -r prog pkg <<<"$line"
  if ! PATH=$PATH:/usr/sbin:/sbin command -v "$prog" >/dev/null 2>&1; then
    if [[ $pkg == @pypi:* ]]; then
      echo "error: $prog (${pkg#@pypi:} from PyPI, $INVENTORY) is not installed: run scripts/deps.sh" >&2
    elif [[ $pkg == @toolchain ]]; then
      echo "error: $prog not found: install the Rust toolchain (https://rustup.rs) first" >&2
    else
      echo "error: $prog (package $pkg, $INVENTORY) does not resolve on PATH" >&2
    fi
    status=1
  fi
done
exit $status
