#!/usr/bin/env bash
# build-guest-image.sh - build vmfleet's test guest (kernel, initramfs, ext4 root)
# from Debian packages only.
#
# Usage: scripts/guest/build-guest-image.sh [OUTPUT_DIR]
#
# OUTPUT_DIR defaults to $VMFLEET_IMAGE_CACHE, else
# ${XDG_CACHE_HOME:-$HOME/.cache}/vmfleet/images. It receives:
#
#   vmlinux.bin  uncompressed ELF vmlinux (PVH entry, boots with QEMU -kernel)
#                taken from Debian's newest linux-image-6.1.0-*-amd64 package
#   initrd.img   gzip'd newc cpio: busybox-static + /init that insmods the
#                modules needed for an ext4 root on virtio-blk (virtio-mmio
#                under `-M microvm`), the ACPI power button, virtio-net, the
#                virtio entropy device and 9p shares over virtio (so the guest
#                can `mount -t 9p -o trans=virtio TAG DIR`), mounts /dev/vda
#                and switch_roots into it; with no disk it gives a rescue shell
#   rootfs.ext4  64 MiB ext4 image (mke2fs -d, no loop mount): busybox init,
#                hostname vmfleet-guest, prints "vmfleet-guest ready", then a
#                respawning root shell (prompt "/ # ") on the serial console;
#                ACPI power button (QMP system_powerdown) -> clean poweroff
#   MANIFEST     what was built from what; doubles as the cache stamp
#
# Re-running is cheap: when every output exists and MANIFEST's cache_key
# (kernel package + version + this script's hash) matches, it prints "cached"
# and exits. Delete MANIFEST to force a rebuild.
#
# Boot (see smoke-boot.sh):
#   qemu-system-x86_64 -M microvm,accel=tcg -cpu max -m 256 -nodefaults \
#     -no-user-config -nographic -kernel vmlinux.bin -initrd initrd.img \
#     -append "console=ttyS0 root=/dev/vda rw panic=-1 quiet" \
#     -drive id=root,file=rootfs.ext4,format=raw,if=none \
#     -device virtio-blk-device,drive=root -serial stdio
# Under TCG also append tsc_early_khz=<host TSC kHz>: see smoke-boot.sh. Keep
# microvm's ACPI on (the default): the kernel finds the virtio-mmio devices
# and the power button only through the ACPI DSDT.
#
# Needs: apt-get/apt-cache (Debian 12) and root when a build tool is missing.
set -euo pipefail

log() { printf 'build-guest-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
ROOTFS_SIZE=64M
# Modules the guest needs, by module name. Each is resolved through
# modules.dep (dependencies first); those built into the kernel are skipped.
#   virtio_mmio    : `-M microvm` exposes virtio devices as virtio-mmio,
#                    described in its ACPI DSDT (LNRO0005)
#   virtio_blk     : /dev/vda
#   crc32c_generic : ext4/jbd2 checksums (metadata_csum) ask the crypto API
#                    for "crc32c" at mount time; it is not in modules.dep
#   ext4           : root filesystem (pulls jbd2, mbcache, crc16)
#   button         : ACPI power button (PNP0C0C, microvm's PWRB) -> KEY_POWER
#   evdev          : /dev/input/event* so busybox acpid sees that key press
#   virtio_balloon : memory resize (QMP balloon) and the guest's memory stats
#   virtio_net     : the NIC on the VM's TAP device
#   virtio_rng     : /vm/device/add {"kind":"rng"} (virtio-rng-device); the
#                    hw_random core is built in (CONFIG_HW_RANDOM=y)
#   9p             : /vm/fs/add shares (mount -t 9p -o trans=virtio TAG DIR);
#                    pulls 9pnet, netfs and fscache (CONFIG_9P_FSCACHE=y)
#   9pnet_virtio   : 9p's virtio transport (virtio-9p-device); not a
#                    dependency of 9p in modules.dep, so named here
GUEST_MODULES=(virtio_mmio virtio_blk crc32c_generic ext4 button evdev virtio_balloon virtio_net virtio_rng 9p 9pnet_virtio)
BUILD_TOOLS=(busybox-static cpio e2fsprogs xz-utils gzip)

# --------------------------------------------------------------------------
# Output directory
# --------------------------------------------------------------------------
OUT_DIR=${1:-${VMFLEET_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmfleet/images}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# One build per output directory at a time (parallel test runs share a cache).
exec 9>"$OUT_DIR/.build.lock"
flock 9

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root to run: $*"; fi
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# --------------------------------------------------------------------------
# Kernel discovery: newest linux-image-6.1.0-<abi>-amd64[-unsigned] that apt
# can fetch. Prints "PACKAGE VERSION".
# --------------------------------------------------------------------------
find_kernel_package() {
    local names best_pkg="" best_ver="" pkg ver
    names=$(apt-cache pkgnames linux-image-6.1.0- 2>/dev/null |
        grep -E '^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$' || true)
    [ -n "$names" ] || return 1
    # madison prints "pkg | version | archive" for each fetchable version
    # (binary ones end in "Packages"; skip deb-src "Sources" lines).
    # shellcheck disable=SC2086
    while IFS='|' read -r pkg ver archive; do
        pkg=${pkg// /}; ver=${ver// /}
        [[ -n $ver && $archive == *Packages ]] || continue
        if [ -z "$best_ver" ] || dpkg --compare-versions "$ver" gt "$best_ver" ||
            { [ "$ver" = "$best_ver" ] && [ "${pkg%-unsigned}" != "$pkg" ] &&
              [ "${best_pkg%-unsigned}" = "$best_pkg" ]; }; then
            # Equal versions: prefer -unsigned (same kernel, no signature).
            best_pkg=$pkg; best_ver=$ver
        fi
    done < <(apt-cache madison $names 2>/dev/null)
    [ -n "$best_pkg" ] || return 1
    printf '%s %s\n' "$best_pkg" "$best_ver"
}

kernel=$(find_kernel_package || true)
if [ -z "$kernel" ]; then
    log "no linux-image-6.1.0-*-amd64 in apt lists; running apt-get update"
    as_root apt-get update -qq
    kernel=$(find_kernel_package) || die "no linux-image-6.1.0-*-amd64 package available"
fi
read -r KPKG KVERSION <<<"$kernel"
SCRIPT_SHA=$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)
CACHE_KEY="$KPKG=$KVERSION script=$SCRIPT_SHA"

# --------------------------------------------------------------------------
# Cache check
# --------------------------------------------------------------------------
OUTPUTS=(vmlinux.bin initrd.img rootfs.ext4)
cached=1
for f in "${OUTPUTS[@]}" MANIFEST; do [ -s "$OUT_DIR/$f" ] || cached=0; done
if [ "$cached" = 1 ] && grep -qxF "cache_key=$CACHE_KEY" "$OUT_DIR/MANIFEST"; then
    log "cached: $OUT_DIR ($KPKG $KVERSION)"
    exit 0
fi

START=$(date +%s.%N)
log "building into $OUT_DIR from $KPKG $KVERSION"

# --------------------------------------------------------------------------
# Build tools (install only what is missing)
# --------------------------------------------------------------------------
missing=()
for p in "${BUILD_TOOLS[@]}"; do pkg_installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { as_root apt-get update -qq &&
          as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
        die "apt-get install ${missing[*]} failed"
fi
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing after installing busybox-static"

# --------------------------------------------------------------------------
# Work dir, removed on exit; outputs are written as temp names and renamed.
# --------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmfleet-guest-build.XXXXXX")
cleanup() {
    rm -rf "$WORK"
    rm -f "$OUT_DIR"/.*.tmp."$$"
}
trap cleanup EXIT

# Stale MANIFEST must not vouch for outputs we are about to replace.
rm -f "$OUT_DIR/MANIFEST"

# --------------------------------------------------------------------------
# Kernel package: download + unpack
# --------------------------------------------------------------------------
(
    cd "$WORK"
    apt_opts=(-q)
    # As root apt warns that _apt cannot write here; download as root quietly.
    [ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" download "$KPKG=$KVERSION" >/dev/null
)
deb=$(ls "$WORK"/*.deb)
dpkg-deb -x "$deb" "$WORK/kpkg"
KROOT=$WORK/kpkg

vmlinuz=$(ls "$KROOT"/boot/vmlinuz-*)
KRELEASE=${vmlinuz##*/vmlinuz-}
KCONFIG=$KROOT/boot/config-$KRELEASE
MODDIR=$KROOT/lib/modules/$KRELEASE
[[ -f $KCONFIG && -d $MODDIR ]] || die "unexpected layout in $deb"
log "kernel release $KRELEASE"

# --------------------------------------------------------------------------
# vmlinux.bin: the bzImage's payload is an xz stream; the first offset of the
# xz magic (FD 37 7A 58 5A 00) whose stream decompresses to an ELF is vmlinux.
# --------------------------------------------------------------------------
extract_vmlinux() {
    local src=$1 dst=$2 off
    # shellcheck disable=SC2013 # (byte offsets, one word each)
    for off in $(LC_ALL=C grep -obUaP '\xFD7zXZ\x00' "$src" | cut -d: -f1); do
        # (process substitution: tail's SIGPIPE when xz stops at the end of
        # the stream must not fail the pipeline under pipefail)
        if xz -dc --single-stream < <(tail -c +"$((off + 1))" "$src") >"$dst" 2>/dev/null &&
            [ "$(head -c 4 "$dst" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
            return 0
        fi
    done
    return 1
}
extract_vmlinux "$vmlinuz" "$WORK/vmlinux" || die "no xz-compressed ELF found in $vmlinuz"

# --------------------------------------------------------------------------
# Module list in load order
# --------------------------------------------------------------------------
# The .deb ships no modules.dep (the postinst runs depmod); generate it with
# busybox's depmod into the unpacked tree.
"$BUSYBOX" depmod -b "$KROOT" "$KRELEASE"
[ -s "$MODDIR/modules.dep" ] || die "depmod produced no modules.dep"

# Show what the kernel config says about the drivers we care about.
log "kernel config: $(grep -E '^CONFIG_(VIRTIO|VIRTIO_MMIO|VIRTIO_BLK|EXT4_FS|JBD2|FS_MBCACHE|CRC16|CRYPTO_CRC32C|ACPI_BUTTON|INPUT_EVDEV|SERIAL_8250|PVH|HW_RANDOM|HW_RANDOM_VIRTIO|9P_FS|NET_9P|NET_9P_VIRTIO)=' "$KCONFIG" |
    sed 's/^CONFIG_//' | tr '\n' ' ')"

declare -A MODPATH=()   # name (dashes as underscores) -> path relative to MODDIR
declare -A MODDEPS=()   # relative path -> its dependencies (relative paths)
while IFS= read -r line; do
    path=${line%%:*}
    name=${path##*/}; name=${name%.ko*}; name=${name//-/_}
    MODPATH[$name]=$path
    MODDEPS[$path]=${line#*:}
done <"$MODDIR/modules.dep"

declare -A BUILTIN=()
while IFS= read -r path; do
    name=${path##*/}; name=${name%.ko*}; BUILTIN[${name//-/_}]=1
done <"$MODDIR/modules.builtin"

LOAD_ORDER=()
declare -A SEEN=()
visit() {   # depth-first: dependencies before the module itself
    local path=$1 dep
    [ -z "${SEEN[$path]:-}" ] || return 0
    SEEN[$path]=1
    for dep in ${MODDEPS[$path]}; do visit "$dep"; done
    LOAD_ORDER+=("$path")
}
for m in "${GUEST_MODULES[@]}"; do
    key=${m//-/_}
    if [ -n "${BUILTIN[$key]:-}" ]; then log "module $m: built in"; continue; fi
    [ -n "${MODPATH[$key]:-}" ] || die "module $m neither built in nor in modules.dep"
    visit "${MODPATH[$key]}"
done
LOADED_NAMES=$(for p in "${LOAD_ORDER[@]}"; do n=${p##*/}; printf '%s\n' "${n%.ko*}"; done | paste -sd' ')
log "initramfs modules (load order): $LOADED_NAMES"

# --------------------------------------------------------------------------
# Helpers for both trees
# --------------------------------------------------------------------------
install_busybox() {   # install_busybox ROOT: busybox + a symlink per applet
    local root=$1 applet
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin}
    cp "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list-full); do
        [ "$applet" = bin/busybox ] && continue
        ln -sf /bin/busybox "$root/$applet"
    done
}

# --------------------------------------------------------------------------
# initrd.img
# --------------------------------------------------------------------------
IR=$WORK/initramfs
mkdir -p "$IR"/{dev,proc,sys,newroot,tmp,etc/acpi/PWRF,lib/modules/"$KRELEASE"}
install_busybox "$IR"
for p in "${LOAD_ORDER[@]}"; do
    mkdir -p "$IR/lib/modules/$KRELEASE/$(dirname "$p")"
    cp "$MODDIR/$p" "$IR/lib/modules/$KRELEASE/$p"
done
printf '%s\n' "${LOAD_ORDER[@]}" >"$IR/lib/modules/$KRELEASE/load-order"
# The kernel opens /dev/console before running /init; devtmpfs is not mounted
# yet, so the node has to be in the archive (when we can create it).
if [ "$(id -u)" -eq 0 ]; then mknod -m 600 "$IR/dev/console" c 5 1; fi

# Rescue-shell power button: /init is PID 1 and ignores poweroff's signal, so
# power off directly.
cat >"$IR/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
sync
exec poweroff -f
EOF
chmod 755 "$IR/etc/acpi/PWRF/00000080"

cat >"$IR/init" <<EOF
#!/bin/sh
# vmfleet initramfs /init (generated by build-guest-image.sh)
KRELEASE=$KRELEASE
EOF
cat >>"$IR/init" <<'EOF'
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

# Kernel command line: root=/dev/X, rootfstype=, ro/rw, init=,
# vmfleet.rootwait=SECONDS (default 3), vmfleet.shell (stay in initramfs).
# (virtio_blk probes synchronously inside insmod, so a present disk is there
# at once; the wait only delays the rescue shell when there is no disk.)
root=/dev/vda rootfstype=ext4 mode=rw init=/sbin/init rootwait=3 shell=
set -f
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=/dev/*) root=${arg#root=} ;;
        rootfstype=*) rootfstype=${arg#rootfstype=} ;;
        ro|rw) mode=$arg ;;
        init=*) init=${arg#init=} ;;
        vmfleet.rootwait=*) rootwait=${arg#vmfleet.rootwait=} ;;
        vmfleet.shell) shell=1 ;;
    esac
done
set +f

# Load modules, dependencies first (order computed from modules.dep at build).
while read -r mod; do
    insmod "/lib/modules/$KRELEASE/$mod" || echo "vmfleet-initramfs: insmod $mod failed"
done <"/lib/modules/$KRELEASE/load-order"

rescue() {
    echo "vmfleet-initramfs: $1; starting rescue shell"
    hostname vmfleet-initramfs
    [ -e /dev/input/event0 ] && acpid -l /dev/null
    export PS1='\w \$ ' HOME=/
    cd /
    while :; do setsid cttyhack sh -l; done
}

[ -z "$shell" ] || rescue "vmfleet.shell given"

i=0
while [ ! -b "$root" ]; do
    [ "$i" -lt $((rootwait * 10)) ] || rescue "no $root after ${rootwait}s"
    usleep 100000
    i=$((i + 1))
done
mount -t "$rootfstype" -o "$mode" "$root" /newroot || rescue "cannot mount $root"
[ -x "/newroot$init" ] || { umount /newroot; rescue "no $init on $root"; }

# Hand /dev (holding the console) to the new root; it mounts its own proc/sys.
umount /proc /sys
if [ -d /newroot/dev ]; then mount --move /dev /newroot/dev; else umount /dev; fi
exec switch_root /newroot "$init"
EOF
chmod 755 "$IR/init"

(cd "$IR" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
    gzip -9n >"$WORK/initrd.img"

# --------------------------------------------------------------------------
# rootfs.ext4
# --------------------------------------------------------------------------
RF=$WORK/rootfs
mkdir -p "$RF"/{dev,proc,sys,tmp,run,root,mnt,var/log,etc/init.d,etc/acpi/PWRF}
chmod 1777 "$RF/tmp"
chmod 700 "$RF/root"
ln -s /run "$RF/var/run"
install_busybox "$RF"

cat >"$RF/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat >"$RF/etc/shadow" <<'EOF'
root::19000:0:99999:7:::
EOF
chmod 600 "$RF/etc/shadow"
cat >"$RF/etc/group" <<'EOF'
root:x:0:
EOF
echo vmfleet-guest >"$RF/etc/hostname"
cat >"$RF/etc/hosts" <<'EOF'
127.0.0.1 localhost
127.0.1.1 vmfleet-guest
EOF
cat >"$RF/etc/profile" <<'EOF'
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PS1='\w \$ '
EOF

# busybox init: rcS, then a root shell on the console, respawned on exit.
# cttyhack opens the real console device (ttyS0 with console=ttyS0) so the
# shell gets a controlling tty (job control, ^C).
cat >"$RF/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
EOF

cat >"$RF/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# vmfleet guest boot script (busybox init sysinit action)
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The vmfleet initramfs hands over a mounted devtmpfs; booted without it, mount one.
grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -o remount,rw / 2>/dev/null
hostname -F /etc/hostname
ip link set lo up 2>/dev/null
# Networking from the kernel command line, as vmfleet's IPAM assigned it:
# vmfleet.ip=<address>/<prefix> vmfleet.gw=<gateway>.
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmfleet.ip=*) vm_ip=${arg#vmfleet.ip=} ;;
        vmfleet.gw=*) vm_gw=${arg#vmfleet.gw=} ;;
    esac
done
if [ -n "$vm_ip" ] && [ -e /sys/class/net/eth0 ]; then
    ip addr add "$vm_ip" dev eth0
    ip link set eth0 up
    [ -n "$vm_gw" ] && ip route add default via "$vm_gw"
fi
# ACPI power button (QEMU system_powerdown): the initramfs loaded button+evdev;
# acpid runs /etc/acpi/PWRF/00000080 on KEY_POWER.
[ -e /dev/input/event0 ] && acpid -l /dev/null
echo "vmfleet-guest ready"
EOF

cat >"$RF/etc/init.d/rcK" <<'EOF'
#!/bin/sh
# vmfleet guest shutdown script (busybox init shutdown action)
echo "vmfleet-guest stopping"
sync
mount -o remount,ro / 2>/dev/null
sync
EOF
chmod 755 "$RF/etc/init.d/rcS" "$RF/etc/init.d/rcK"

cat >"$RF/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
# ACPI power button: orderly shutdown through busybox init.
exec poweroff
EOF
chmod 755 "$RF/etc/acpi/PWRF/00000080"

mke2fs -q -F -t ext4 -L vmfleet-root -m 0 -E root_owner=0:0 -d "$RF" \
    "$WORK/rootfs.ext4" "$ROOTFS_SIZE" >/dev/null
fsck_out=$(e2fsck -fn "$WORK/rootfs.ext4" 2>&1) || { echo "$fsck_out" >&2; die "fresh rootfs.ext4 fails e2fsck"; }

# --------------------------------------------------------------------------
# Publish: temp name in OUT_DIR, then rename; MANIFEST last.
# --------------------------------------------------------------------------
publish() {   # publish SRC NAME
    cp "$1" "$OUT_DIR/.$2.tmp.$$"
    mv -f "$OUT_DIR/.$2.tmp.$$" "$OUT_DIR/$2"
}
publish "$WORK/vmlinux" vmlinux.bin
publish "$WORK/initrd.img" initrd.img
publish "$WORK/rootfs.ext4" rootfs.ext4

{
    echo "cache_key=$CACHE_KEY"
    echo "kernel_package=$KPKG"
    echo "kernel_package_version=$KVERSION"
    echo "kernel_release=$KRELEASE"
    echo "busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)"
    echo "initramfs_modules=$LOADED_NAMES"
    echo "rootfs_size=$ROOTFS_SIZE"
    echo "kernel_cmdline=console=ttyS0 root=/dev/vda rw panic=-1 quiet"
    echo "kernel_cmdline_tcg=tsc_early_khz=<host TSC kHz> (else PIT calibration can fail and hang the boot)"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    for f in "${OUTPUTS[@]}"; do
        echo "sha256_$f=$(sha256sum "$OUT_DIR/$f" | cut -d' ' -f1)"
    done
} >"$WORK/MANIFEST"
publish "$WORK/MANIFEST" MANIFEST

log "done in $(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e - s}')s: $OUT_DIR"
ls -l "$OUT_DIR" >&2
