#!/bin/bash
# End-to-end test of precog's cgroup limits on a pure cgroup-v2 host, in a small VM.
#
# The development hosts run hybrid cgroups, so the v2 behaviour is tested in qemu (software
# emulation): a Debian bookworm cloud kernel and a debootstrapped bookworm packed as an initramfs,
# with the deb, a test worker (tests/e2e/vm/e2e-worker), a drop-in that gives it a pool with a 20%
# CPU quota and a 64M memory.max, and a boot-time unit that runs tests/e2e/vm/guest-test.sh and
# powers off. The guest's results come back over the second serial port.
#
# Needs root; installs qemu-system-x86 (from bookworm-backports, which keeps the host's newer
# qemu-utils), debootstrap and cpio with apt-get when missing. The kernel and the root filesystem
# are cached under $PRECOG_E2E_CACHE (default /var/cache/precog-e2e). Prints `SKIPPED: <reason>`
# and exits 0 when it cannot run here; ends with `N passed, M failed`.
# Set PRECOG_E2E_DEB=<file> to test a deb built beforehand instead of building one.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"

[ "$(id -u)" -eq 0 ] || skip "needs root to install tools and debootstrap the guest"

VM_CACHE="$E2E_CACHE/vm"
VM_TIMEOUT=${PRECOG_E2E_VM_TIMEOUT:-420}
WORK=$(mktemp -d /tmp/precog-e2e-vm.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# qemu from bookworm-backports: bookworm's own qemu-system-x86 would replace a newer qemu-utils.
install_qemu() {
    command -v qemu-system-x86_64 >/dev/null && return 0
    local sources=/etc/apt/sources.list.d/precog-e2e-backports.sources
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\n%s\n' \
            "$(host_mirror)" \
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" >"$sources"
    fi
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-x86 >/dev/null
}

# The bookworm cloud kernel (virtio and the rest as modules, which the guest does not need: all
# it uses is the serial port and its initramfs), unpacked once.
cloud_kernel() {
    local package kernel
    package=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-/ { print $2; exit }')
    [ -n "$package" ] || { say "no linux-image-cloud-amd64 in apt's lists"; return 1; }
    kernel="$VM_CACHE/vmlinuz-${package#linux-image-}"
    if [ ! -f "$kernel" ]; then
        say "fetching $package (once)"
        mkdir -p "$VM_CACHE/download"
        (cd "$VM_CACHE/download" \
            && apt-get download -qq -o APT::Sandbox::User=root "$package" >/dev/null) || return 1
        rm -rf "$VM_CACHE/unpacked"
        dpkg-deb -x "$VM_CACHE"/download/"$package"_*.deb "$VM_CACHE/unpacked" || return 1
        cp "$VM_CACHE"/unpacked/boot/vmlinuz-* "$kernel.tmp" && mv "$kernel.tmp" "$kernel"
        rm -rf "$VM_CACHE/unpacked" "$VM_CACHE/download"
    fi
    printf '%s\n' "$kernel"
}

# The root filesystem as a cpio archive, remade when the cached root filesystem changes.
rootfs_cpio() {
    local rootfs=$1 archive="$VM_CACHE/rootfs.cpio"
    if [ ! -f "$archive" ] || [ "$rootfs/.e2e-includes" -nt "$archive" ]; then
        say "packing the guest's root filesystem (once)"
        (cd "$rootfs" && find . -path ./.e2e-includes -prune -o -print \
            | cpio --quiet -o -H newc >"$archive.tmp") || return 1
        mv "$archive.tmp" "$archive"
    fi
    printf '%s\n' "$archive"
}

# This run's files, as a second cpio archive that the kernel unpacks over the first.
run_cpio() {
    local deb=$1 stage="$WORK/stage" lib=usr/local/lib/precog-e2e
    mkdir -p "$stage/root" "$stage/$lib" "$stage/etc/precog/precogd.toml.d" \
        "$stage/etc/systemd/system/multi-user.target.wants"
    cp "$deb" "$stage/root/precog.deb"
    cp "$HERE/lib.sh" "$HERE/vm/guest-test.sh" "$HERE/vm/e2e-worker" "$stage/$lib/"
    chmod 755 "$stage/$lib/guest-test.sh" "$stage/$lib/e2e-worker"
    cp "$HERE/vm/50-e2e.toml" "$stage/etc/precog/precogd.toml.d/"
    cp "$HERE/vm/precog-e2e.service" "$stage/etc/systemd/system/"
    ln -s ../precog-e2e.service "$stage/etc/systemd/system/multi-user.target.wants/"
    echo precog-e2e-vm >"$stage/etc/hostname"
    (cd "$stage" && find . | cpio --quiet -o -H newc -R 0:0) >"$WORK/run.cpio"
}

apt_install debootstrap cpio || skip "cannot install debootstrap, cpio"
install_qemu || skip "cannot install qemu-system-x86 from bookworm-backports"

if [ -n "${PRECOG_E2E_DEB:-}" ]; then
    DEB=$PRECOG_E2E_DEB
else
    say "building the deb"
    DEB=$(build_deb "$WORK/deb") || { fail "the deb builds"; summary; exit 1; }
    pass "the deb builds"
fi

mkdir -p "$VM_CACHE"
KERNEL=$(cloud_kernel) || skip "cannot fetch the bookworm cloud kernel"
ROOTFS=$(bookworm_rootfs) || skip "cannot debootstrap a bookworm root filesystem"
BASE_CPIO=$(rootfs_cpio "$ROOTFS") || skip "cannot pack the root filesystem"
run_cpio "$DEB" || skip "cannot pack this run's files"
cat "$BASE_CPIO" "$WORK/run.cpio" >"$WORK/initrd"

say "booting the guest (qemu TCG, at most ${VM_TIMEOUT}s)"
started=$(date +%s)
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 2048 \
    -nodefaults -no-reboot -display none -monitor none \
    -kernel "$KERNEL" -initrd "$WORK/initrd" \
    -append "console=ttyS0 rdinit=/sbin/init panic=1 quiet systemd.show_status=0" \
    -serial "file:$WORK/console.log" -serial "file:$WORK/results.log"
status=$?
say "the guest ran for $(($(date +%s) - started))s"

tr -d '\r' <"$WORK/results.log" >"$WORK/results.txt"
cat "$WORK/results.txt"
guest_tally=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$WORK/results.txt" | tail -n 1)
if [ -z "$guest_tally" ]; then
    [ "$status" -eq 124 ] && say "qemu timed out after ${VM_TIMEOUT}s"
    fail "the guest boots and reports its results" "$(tail -n 60 "$WORK/console.log")"
else
    pass "the guest boots and reports its results"
    E2E_PASSED=$((E2E_PASSED + ${guest_tally%% passed*}))
    guest_failed=${guest_tally#*passed, }
    E2E_FAILED=$((E2E_FAILED + ${guest_failed%% failed}))
fi
summary
