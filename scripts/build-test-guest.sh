#!/usr/bin/env bash
# Builds the tiny test guest the suite boots under libvirt/QEMU: the kernel of
# Debian's linux-image-*-cloud-amd64 (downloaded and unpacked, not installed)
# and a busybox initramfs whose /init brings up virtio-net, runs udhcpc,
# prints its address, fetches its instance id from the metadata service and
# pings the targets named on the kernel command line (nubo.ping=IP) or in the
# user data (lines "ping IP"; a line "poweroff" powers the guest off).
# Disk lines in the user data (each runs in the background and first waits,
# polling every 0.5 s, for the virtio disk whose serial is SERIAL, so it
# works for disks hot-plugged after boot; SERIAL may also be a device name
# such as vda, the root disk, which has no serial):
#   disk-write SERIAL PATTERN  writes 1 MiB of PATTERN repeated (O_DIRECT,
#                              fsync), prints NUBO-GUEST-DISK-WRITE SERIAL ok SHA256
#   disk-read SERIAL           prints NUBO-GUEST-DISK-READ SERIAL SHA256 of its first MiB
#   disk-iops SERIAL SECONDS   4 KiB O_DIRECT writes for SECONDS, prints
#                              NUBO-GUEST-DISK-IOPS SERIAL <ops/s> <ops> <centiseconds>
#   disk-watch                 prints NUBO-GUEST-DISK-ADDED/REMOVED DEV SERIAL on hot-plug
#   disk-mark SERIAL PATTERN   prints NUBO-GUEST-DISK-READ SERIAL SHA256 of its first MiB; if
#                              that is not 1 MiB of PATTERN yet, writes it as disk-write does
#                              (NUBO-GUEST-DISK-WRITE SERIAL ok SHA256): the marker of a disk
#                              that must survive (a later boot finds it and writes nothing)
#   disk-marks SERIAL SECONDS  every SECONDS reads the word at the start of the disk (O_DIRECT)
#                              and prints NUBO-GUEST-DISK-MARK SERIAL read WORD, then writes
#                              m<uptime in cs> there (O_DIRECT, fsync) and prints
#                              NUBO-GUEST-DISK-MARK SERIAL wrote WORD|fail (each read finds the
#                              word written before: a volume that moved with a migrating guest)
# Liveness lines (live migration):
#   fastping IP                pings IP every 10 ms; prints NUBO-GUEST-FASTPING IP seq N every
#                              100th reply and NUBO-GUEST-FASTPING IP gap MS after-seq N when
#                              replies are missing (MS = time between the two replies around
#                              the hole, from the sequence numbers)
#   uptime                     prints NUBO-GUEST-UPTIME <seconds> every second (a reboot
#                              shows as uptime going back and a new "NUBO-GUEST: init")
#   renew SECONDS              runs a udhcpc daemon that leaves the address alone and, every
#                              SECONDS, renews its lease (SIGUSR1: a unicast REQUEST to the
#                              server) and reads the instance id from the metadata service;
#                              prints NUBO-GUEST-DHCP bound|renew IP uptime U and
#                              NUBO-GUEST-MD ID uptime U (the network of a guest that moved)
#   dirty MIB                  rewrites 2 copies of MIB MiB of random data in memory (a tmpfs of
#                              its own) over and over,
#                              faster than a capped migration link moves it; every 4th pass
#                              checks the copy against the first one and prints
#                              NUBO-GUEST-DIRTY pass N ok|bad MiBps R (R: MiB written per second
#                              since the last check): a page lost or stale after a live (post-copy)
#                              migration shows as bad
#   tlb-churn                  two processes that wake every 5 ms in turn (pings on lo): each
#                              switch of address space reloads CR3, which flushes QEMU's TCG
#                              TLB. Works around a QEMU 7.2 TCG bug that loses guest writes
#                              during a live migration (the dirty-bitmap sync does not reset
#                              the TLB, so stores through it are not logged; fixed upstream in
#                              QEMU 9.0, 03bfc2188f "physmem: Fix migration dirty bitmap
#                              coherency with TCG memory access"); see docs/migration-hosts.md
#
# Output (cached; rebuilt only when missing or when this script changes):
#   $NUBO_GUEST_DIR/vmlinuz, $NUBO_GUEST_DIR/initrd.gz
# Default NUBO_GUEST_DIR: /var/cache/nubo/test-guest (world-readable: libvirt
# chowns kernel and initrd while a domain runs).
set -euo pipefail
OUT=${NUBO_GUEST_DIR:-/var/cache/nubo/test-guest}
HERE=$(cd "$(dirname "$0")" && pwd)
STAMP=$(sha256sum "$HERE/build-test-guest.sh" | cut -c1-16)
cached() { [[ -f $OUT/vmlinuz && -f $OUT/initrd.gz && "$(cat "$OUT/stamp" 2>/dev/null)" == "$STAMP" ]]; }
if cached; then
  echo "$OUT (cached)"
  exit 0
fi
mkdir -p "$OUT"; chmod 755 "$OUT"
# One build at a time: tests of one binary (threads) and of several call this
# at once on a new machine. Wait for the build in progress, then use it.
exec 9>"$OUT/.lock"
flock 9
if cached; then
  echo "$OUT (cached)"
  exit 0
fi
command -v cpio >/dev/null && [[ -x /bin/busybox ]] || \
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends busybox-static cpio >/dev/null

W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
IMG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[[ -n $IMG ]] || { echo "error: cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
KVER=${IMG#linux-image-}
(cd "$W" && apt-get download "$IMG" >/dev/null && dpkg -x "${IMG}"_*.deb k)
cp "$W/k/boot/vmlinuz-$KVER" "$OUT/vmlinuz.new" && mv -f "$OUT/vmlinuz.new" "$OUT/vmlinuz"

R=$W/root
mkdir -p "$R"/{bin,proc,sys,dev,tmp,etc,lib/modules}
cp /bin/busybox "$R/bin/busybox"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net drivers/block/virtio_blk; do
  f=$W/k/lib/modules/$KVER/kernel/$m.ko
  [[ -f $f ]] || f=$f.xz
  [[ -f $f ]] && cp "$f" "$R/lib/modules/"
done
cat > "$R/bin/udhcpc.script" <<'S'
#!/bin/busybox sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do
        if [ "$2" = "0.0.0.0" ]; then ip route add "$1" dev "$interface"; else ip route add "$1" via "$2" dev "$interface"; fi
        shift 2
      done
    else
      for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    fi ;;
esac
S
cat > "$R/bin/udhcpc.report" <<'S'
#!/bin/busybox sh
case "$1" in
  bound|renew) echo "NUBO-GUEST-DHCP $1 $ip uptime $(cut -d' ' -f1 /proc/uptime)" ;;
esac
S
cat > "$R/init" <<'S'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_blk; do
  insmod /lib/modules/$m.ko* 2>/dev/null
done
echo "NUBO-GUEST: init uptime $(cut -d' ' -f1 /proc/uptime)"
ip link set lo up; ip link set eth0 up
# nubo.nonet: hypervisor-only tests (no DHCP server, no metadata): skip the
# network part, which would otherwise wait ~2 minutes for its timeouts.
if grep -q nubo.nonet /proc/cmdline; then
  if grep -q nubo.poweroff /proc/cmdline; then echo "NUBO-GUEST: powering off"; sleep 1; poweroff -f; fi
  while :; do sleep 3600; done
fi
udhcpc -i eth0 -s /bin/udhcpc.script -q -f -n -t 30 -T 2 -O staticroutes -O mtu || echo "NUBO-GUEST: dhcp failed"
echo "NUBO-GUEST-IP: $(ip -4 -o addr show dev eth0 | awk '{print $4}') uptime $(cut -d' ' -f1 /proc/uptime)"
MD=""
for i in 1 2 3 4 5 6 7 8 9 10; do
  MD=$(timeout 5 wget -qO- http://169.254.169.254/latest/meta-data/instance-id 2>/dev/null) && break
  sleep 1
done
echo "NUBO-GUEST-METADATA: ${MD:-<none>} uptime $(cut -d' ' -f1 /proc/uptime)"
# Targets and actions: nubo.ping=IP / nubo.poweroff on the kernel command
# line, or lines "ping IP" / "poweroff" in the user data.
UD=""
[ -n "$MD" ] && UD=$(timeout 5 wget -qO- http://169.254.169.254/latest/user-data 2>/dev/null)
PINGS=""
for a in $(cat /proc/cmdline); do case "$a" in nubo.ping=*) PINGS="$PINGS ${a#nubo.ping=}" ;; esac; done
PINGS="$PINGS $(echo "$UD" | awk '$1=="ping"{print $2}')"
for t in $PINGS; do
  ( while :; do
      if ping -c 1 -W 1 "$t" >/dev/null 2>&1; then echo "NUBO-GUEST-PING $t ok"; else echo "NUBO-GUEST-PING $t fail"; fi
      sleep 1
    done ) &
done
# Disks, by virtio serial (/sys/block/vd*/serial).
disk_of() {
  case "$1" in vd[a-z]) [ -b "/dev/$1" ] && { echo "/dev/$1"; return 0; } ;; esac
  for d in /sys/block/vd*; do [ -f "$d/serial" ] && [ "$(cat "$d/serial")" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }; done; return 1; }
wait_disk() { while ! disk_of "$1"; do sleep 0.5; done; }
cs() { awk '{printf "%d", $1*100}' /proc/uptime; }
echo "$UD" | while read -r cmd a1 a2; do
  case "$cmd" in
    disk-write) ( D=$(wait_disk "$a1")
        yes "$a2" | head -c 1048576 > /tmp/pattern.$a1
        if dd if=/tmp/pattern.$a1 of="$D" bs=65536 count=16 oflag=direct conv=fsync 2>/dev/null; then
          sync; echo "NUBO-GUEST-DISK-WRITE $a1 ok $(sha256sum /tmp/pattern.$a1 | cut -d' ' -f1)"
        else echo "NUBO-GUEST-DISK-WRITE $a1 fail"; fi ) & ;;
    disk-mark) ( D=$(wait_disk "$a1")
        yes "$a2" | head -c 1048576 > /tmp/pattern.$a1
        WANT=$(sha256sum /tmp/pattern.$a1 | cut -d' ' -f1)
        HAVE=$(dd if="$D" bs=65536 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
        echo "NUBO-GUEST-DISK-READ $a1 $HAVE"
        if [ "$HAVE" != "$WANT" ]; then
          if dd if=/tmp/pattern.$a1 of="$D" bs=65536 count=16 oflag=direct conv=fsync 2>/dev/null; then
            sync; echo "NUBO-GUEST-DISK-WRITE $a1 ok $WANT"
          else echo "NUBO-GUEST-DISK-WRITE $a1 fail"; fi
        fi ) & ;;
    disk-read) ( D=$(wait_disk "$a1")
        echo "NUBO-GUEST-DISK-READ $a1 $(dd if="$D" bs=65536 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)" ) & ;;
    disk-marks) ( D=$(wait_disk "$a1")
        while :; do
          echo "NUBO-GUEST-DISK-MARK $a1 read $(dd if="$D" bs=4096 count=1 iflag=direct 2>/dev/null | tr -d '\000' | head -n 1)"
          W="m$(cs)"
          { printf '%s\n' "$W"; dd if=/dev/zero bs=4096 count=1 2>/dev/null; } | head -c 4096 > /tmp/mark.$a1
          if dd if=/tmp/mark.$a1 of="$D" bs=4096 count=1 oflag=direct conv=fsync 2>/dev/null; then
            echo "NUBO-GUEST-DISK-MARK $a1 wrote $W"
          else echo "NUBO-GUEST-DISK-MARK $a1 wrote fail"; fi
          sleep "${a2:-2}"
        done ) & ;;
    disk-iops) ( D=$(wait_disk "$a1"); N=0; T0=$(cs); END=$((T0 + ${a2:-5} * 100))
        while [ "$(cs)" -lt "$END" ]; do
          dd if=/dev/zero of="$D" bs=4096 count=20 seek=$((N % 20000)) oflag=direct 2>/dev/null || break
          N=$((N + 20))
        done
        T=$(( $(cs) - T0 )); [ "$T" -gt 0 ] || T=1
        echo "NUBO-GUEST-DISK-IOPS $a1 $((N * 100 / T)) $N $T" ) & ;;
    fastping) ( ping -i 0.01 -W 1 "$a1" 2>/dev/null | awk -v t="$a1" '
          /seq=/ { match($0, /seq=[0-9]+/); s = substr($0, RSTART + 4, RLENGTH - 4) + 0
                   if (last != "" && s - last > 1) { print "NUBO-GUEST-FASTPING " t " gap " (s - last) * 10 " after-seq " last; fflush() }
                   last = s
                   if (s % 100 == 0) { print "NUBO-GUEST-FASTPING " t " seq " s; fflush() } }' ) & ;;
    uptime) ( while :; do echo "NUBO-GUEST-UPTIME $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done ) & ;;
    dirty) ( M=/run/dirty; mkdir -p $M; mount -t tmpfs -o size=$((a1 * 2 + 1))m dirty $M
        head -c $((a1 * 1048576)) /dev/urandom > $M/0
        SUM=$(sha256sum $M/0 | cut -d' ' -f1); N=0; T=$(cs)
        while :; do
          N=$((N + 1)); cp $M/0 $M/1 && cp $M/1 $M/0 || echo "NUBO-GUEST-DIRTY copy failed"
          if [ $((N % 4)) -eq 0 ]; then
            NOW=$(cs); D=$((NOW - T)); [ "$D" -gt 0 ] || D=1; T=$NOW
            if [ "$(sha256sum $M/0 | cut -d' ' -f1)" = "$SUM" ]; then R=ok; else R=bad; fi
            echo "NUBO-GUEST-DIRTY pass $N $R MiBps $((a1 * 8 * 100 / D))"
          fi
        done ) & ;;
    tlb-churn) ping -i 0.005 127.0.0.1 >/dev/null 2>&1 & ping -i 0.005 127.0.0.2 >/dev/null 2>&1 & ;;
    renew) ( udhcpc -i eth0 -s /bin/udhcpc.report -f -t 30 -T 2 2>/dev/null & P=$!
        while :; do
          sleep "${a1:-3}"; kill -USR1 "$P"
          echo "NUBO-GUEST-MD $(timeout 5 wget -qO- http://169.254.169.254/latest/meta-data/instance-id 2>/dev/null || echo '<none>') uptime $(cut -d' ' -f1 /proc/uptime)"
        done ) & ;;
    disk-watch) ( OLD=""
        while :; do
          NOW=$(for d in /sys/block/vd*; do [ -e "$d" ] && echo "${d##*/}:$(cat "$d/serial" 2>/dev/null)"; done)
          for x in $NOW; do echo "$OLD" | grep -qx "$x" || echo "NUBO-GUEST-DISK-ADDED ${x%%:*} ${x#*:}"; done
          for x in $OLD; do echo "$NOW" | grep -qx "$x" || echo "NUBO-GUEST-DISK-REMOVED ${x%%:*} ${x#*:}"; done
          OLD=$NOW; sleep 0.5
        done ) & ;;
  esac
done
if grep -q nubo.poweroff /proc/cmdline || echo "$UD" | grep -qx poweroff; then
  echo "NUBO-GUEST: powering off"; sleep 1; poweroff -f
fi
while :; do sleep 3600; done
S
chmod +x "$R/init" "$R/bin/udhcpc.script" "$R/bin/udhcpc.report"
# Replaced atomically: other test runs may be booting the previous guest.
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -9) > "$OUT/initrd.gz.new"
chmod 644 "$OUT/initrd.gz.new"
mv -f "$OUT/initrd.gz.new" "$OUT/initrd.gz"
chmod 644 "$OUT/vmlinuz"
echo "$STAMP" > "$OUT/stamp"
echo "$OUT"
