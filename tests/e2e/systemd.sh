#!/bin/bash
# End-to-end test of the precog deb under real systemd.
#
# Builds the deb, boots a Debian bookworm with systemd as PID 1 in systemd-nspawn (a pure cgroup2
# tree, no network, the cached root filesystem left untouched by an overlay), installs the deb
# there and drives it the way an operator and an app server would: socket activation, start,
# reload, restart, stop, requests over the socket and over the system bus as root, as a member of
# the precog group and as nobody, the journal, conffile handling on reinstall, and purge.
#
# Needs root; installs systemd-container and debootstrap with apt-get when missing. Prints
# `SKIPPED: <reason>` and exits 0 when it cannot run here; ends with `N passed, M failed`.
# Set PRECOG_E2E_DEB=<file> to test a deb built beforehand instead of building one.
# Set PRECOG_E2E_KEEP=1 to leave the container running at the end for a look inside.
set -u

. "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || skip "needs root to boot a container"
apt_install systemd-container debootstrap lintian \
    || skip "cannot install systemd-container, debootstrap, lintian"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is not available"

WORK=$(mktemp -d /tmp/precog-e2e-systemd.XXXXXX)
CGROUP_NAME="precog-e2e-$$"
NSPAWN_PID=""
LEADER=""
SOCK=/run/precog/precogd.sock
BUS_ARGS=(org.precog.Precog1 /org/precog/Precog1 org.precog.Precog1)
RUN_ARGS=(run validate_postal_code --session e2e country=DE postal_code=10115)

# The cgroup directories made for the container, in every hierarchy that nspawn looks at.
own_cgroups() {
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        echo "/sys/fs/cgroup/$CGROUP_NAME"
        return
    fi
    local hierarchy
    for hierarchy in unified systemd; do
        [ -d "/sys/fs/cgroup/$hierarchy" ] && echo "/sys/fs/cgroup/$hierarchy/$CGROUP_NAME"
    done
}

cleanup() {
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID"
        for _ in $(seq 1 40); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.25
        done
        kill -0 "$NSPAWN_PID" 2>/dev/null && kill -KILL "$NSPAWN_PID"
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    local dir
    for dir in $(own_cgroups); do
        [ -d "$dir" ] && find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    rm -rf "$WORK"
}

# Boots the container from a cgroup made for it (there is no host systemd to ask for a scope).
boot_container() {
    local rootfs=$1 debdir=$2 dir
    for dir in $(own_cgroups); do
        mkdir -p "$dir" || return 1
    done
    (
        for dir in $(own_cgroups); do
            echo "$BASHPID" >"$dir/cgroup.procs"
        done
        exec env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet --boot \
            --register=no --keep-unit --private-network --volatile=overlay \
            --machine="precog-e2e-$$" --directory="$rootfs" --bind-ro="$debdir:/mnt/precog-deb"
    ) </dev/null >"$WORK/console.log" 2>&1 &
    NSPAWN_PID=$!

    for _ in $(seq 1 120); do
        kill -0 "$NSPAWN_PID" 2>/dev/null || return 1
        if [ -z "$LEADER" ]; then
            LEADER=$(awk -v p="$NSPAWN_PID" '$2 == p { print $1; exit }' \
                <(ps -eo pid=,ppid=))
        fi
        if [ -n "$LEADER" ] && [ -S "/proc/$LEADER/root/run/systemd/private" ]; then
            # systemd answers once its private socket is there; wait for the boot to settle.
            timeout 60 nsenter -t "$LEADER" -m -u -i -n -p -C \
                systemctl is-system-running --wait >/dev/null 2>&1
            return 0
        fi
        sleep 0.25
    done
    return 1
}

# Installs and purges the deb in a container where systemd is not running (as in a chroot or an
# image build): the maintainer scripts must create the users and skip starting anything.
install_without_systemd() {
    local rootfs=$1 debdir=$2 dir
    for dir in $(own_cgroups); do
        mkdir -p "$dir" || return 1
    done
    (
        for dir in $(own_cgroups); do
            echo "$BASHPID" >"$dir/cgroup.procs"
        done
        exec env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet --register=no \
            --keep-unit --private-network --volatile=overlay --directory="$rootfs" \
            --bind-ro="$debdir:/mnt/precog-deb" /bin/sh -exc '
                test ! -d /run/systemd/system
                dpkg -i /mnt/precog-deb/*.deb
                getent group precog
                getent passwd precog-worker
                test -L /etc/systemd/system/sockets.target.wants/precogd.socket
                dpkg --purge precog
                ! getent passwd precog-worker'
    ) </dev/null
}

in_ct() {
    nsenter -t "$LEADER" -m -u -i -n -p -C \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

# as USER COMMAND...: runs COMMAND in the container as USER with USER's groups.
as() {
    local user=$1
    shift
    in_ct setpriv --reuid="$user" --regid="$(in_ct id -g "$user")" --init-groups "$@"
}

main_pid() { in_ct systemctl show -P MainPID precogd.service; }

running_pid() {
    local pid
    pid=$(main_pid)
    [ -n "$pid" ] && [ "$pid" != 0 ] && printf '%s\n' "$pid"
}

state_is() { [ "$(in_ct systemctl is-active "$1")" = "$2" ]; }

is_empty() {
    local out
    out=$("$@" 2>&1)
    [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}

# Every process of the service but precogd itself is a worker and must run as precog-worker.
workers_run_as_precog_worker() {
    local cg pids pid uid worker_uid count=0
    cg=$(in_ct systemctl show -P ControlGroup precogd.service)
    [ -n "$cg" ] || { echo "precogd.service has no cgroup (not running?)"; return 1; }
    worker_uid=$(in_ct id -u precog-worker) || return 1
    pids=$(in_ct sh -c "cat \$(find /sys/fs/cgroup$cg -name cgroup.procs)")
    for pid in $pids; do
        [ "$pid" = "$(main_pid)" ] && continue
        uid=$(in_ct awk '/^Uid:/ { print $2 }' "/proc/$pid/status") || continue
        [ "$uid" = "$worker_uid" ] || { echo "pid $pid runs as uid $uid"; return 1; }
        count=$((count + 1))
    done
    [ "$count" -gt 0 ] || { echo "no worker processes in $cg"; return 1; }
}

journal_has_structured_fields() {
    in_ct journalctl -u precogd.service -o json --no-pager \
        | grep '"TARGET":"precog' | grep -q '"CODE_FILE"'
}

conffile_keeps_edit() { in_ct grep -q '^# edited by the e2e test' /etc/precog/precogd.toml; }

nothing_left_behind() {
    local found
    found=$(in_ct find / -xdev -name '*precog*' -not -path '/mnt/*' 2>/dev/null)
    [ -z "$found" ] || { echo "left behind: $found"; return 1; }
    in_ct test ! -e /run/precog || { echo "/run/precog is still there"; return 1; }
    if in_ct getent passwd precog-worker || in_ct getent group precog; then
        echo "the precog-worker user or the precog group is still there"
        return 1
    fi
}

trap cleanup EXIT

if [ -n "${PRECOG_E2E_DEB:-}" ]; then
    mkdir -p "$WORK/deb" && cp "$PRECOG_E2E_DEB" "$WORK/deb/" || exit 1
    DEB="$WORK/deb/$(basename "$PRECOG_E2E_DEB")"
else
    say "building the deb"
    DEB=$(build_deb "$WORK/deb") || { fail "the deb builds"; summary; exit 1; }
    pass "the deb builds"
fi
DEB_IN_CT="/mnt/precog-deb/$(basename "$DEB")"

# Errors and warnings count; the overrides shipped in the package give a reason for each one.
lintian_is_clean() {
    local out
    out=$(lintian "$DEB" 2>&1 | grep -E '^(E|W): ')
    [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}
check "lintian reports no errors and no warnings" lintian_is_clean
# The threshold is on systemd-analyze's internal scale of 0-100: 25 is an exposure of 2.5.
check "precogd.service's exposure is 2.5 or lower" systemd-analyze security --offline=true \
    --threshold=25 "$E2E_ROOT/systemd/precogd.service"

ROOTFS=$(bookworm_rootfs) \
    || skip "cannot debootstrap a bookworm root filesystem"
check "the deb installs, enables and purges without a running systemd" \
    install_without_systemd "$ROOTFS" "$WORK/deb"
boot_container "$ROOTFS" "$WORK/deb" \
    || skip "systemd-nspawn cannot boot a container here: $(tail -n 5 "$WORK/console.log")"

# Install, and what the package puts in place.
check "dpkg installs the deb" in_ct dpkg -i "$DEB_IN_CT"
# --man=no: the minimal container has no man; the pages are checked with lintian.
check "systemd-analyze verify says nothing about the units" is_empty in_ct \
    systemd-analyze verify --man=no precogd.socket precogd.service
check "the packaged configuration is valid" in_ct precogd --check-config
check "the precog group exists" in_ct getent group precog
check "the precog-worker user exists" in_ct getent passwd precog-worker
check "the socket unit is listening after install" state_is precogd.socket active
check "the socket is root:precog 0660" \
    test "$(in_ct stat -c '%U:%G %a' $SOCK)" = "root:precog 660"
check "the service waits for its first client" state_is precogd.service inactive

# Socket activation, then the lifecycle under systemctl.
check "a connection starts precogd" in_ct precogctl --socket $SOCK ping
check "precogd is active after the first connection" state_is precogd.service active
check "systemctl start" in_ct systemctl start precogd.service
pid_before=$(running_pid)
check "systemctl reload" in_ct systemctl reload precogd.service
check "reload keeps the same process" test -n "$pid_before" -a "$(main_pid)" = "$pid_before"
check "precogd is active after reload" state_is precogd.service active
check "systemctl restart" in_ct systemctl restart precogd.service
check "restart runs a new process" test -n "$(running_pid)" -a "$(main_pid)" != "$pid_before"
check "precogd answers after restart" in_ct precogctl --socket $SOCK ping
check "workers run as precog-worker" workers_run_as_precog_worker

# The socket: a precog member may run processes, nobody may not.
in_ct useradd --no-create-home --groups precog shopapp
check "a precog member runs validate_postal_code" as shopapp precogctl --socket $SOCK \
    "${RUN_ARGS[@]}"
check_denied "nobody is refused the socket" "denied|forbidden" as nobody precogctl \
    --socket $SOCK "${RUN_ARGS[@]}"

# The system bus and its policy.
check "root calls Status over D-Bus" in_ct busctl call "${BUS_ARGS[@]}" Status
check "a precog member calls Status over D-Bus" as shopapp busctl call "${BUS_ARGS[@]}" Status
check "a precog member reads the properties" as shopapp busctl introspect "${BUS_ARGS[0]}" \
    "${BUS_ARGS[1]}"
check_denied "nobody is refused Status" "access denied" as nobody busctl call \
    "${BUS_ARGS[@]}" Status
check_denied "nobody is refused FlushCache" "access denied" as nobody busctl call \
    "${BUS_ARGS[@]}" FlushCache
check_denied "a precog member is refused FlushCache" "access denied" as shopapp busctl call \
    "${BUS_ARGS[@]}" FlushCache

check "the journal holds precogd's structured fields" journal_has_structured_fields

check "systemctl stop" in_ct systemctl stop precogd.service
check "precogd exits cleanly on SIGTERM" test "$(in_ct systemctl show -P Result \
    precogd.service)" = success
check "the socket keeps listening while precogd is stopped" state_is precogd.socket active

# Conffiles: an edit survives reinstall and remove; purge takes everything.
in_ct sh -c 'echo "# edited by the e2e test" >>/etc/precog/precogd.toml'
check "reinstalling the deb" in_ct dpkg -i "$DEB_IN_CT"
check "reinstall keeps the edited conffile" conffile_keeps_edit
check "dpkg removes the package" in_ct dpkg --remove precog
check "remove keeps the edited conffile" conffile_keeps_edit
check "remove stops the socket" state_is precogd.socket inactive
check "installing again after remove" in_ct dpkg -i "$DEB_IN_CT"
check "the edit is still there after installing again" conffile_keeps_edit
check "precogd answers after installing again" in_ct precogctl --socket $SOCK ping
check "dpkg purges the package" in_ct dpkg --purge precog
check "purge leaves nothing behind" nothing_left_behind

if [ "$E2E_FAILED" -gt 0 ]; then
    echo "---- journal of the container ----"
    in_ct journalctl --no-pager -n 300 -o short-precise
fi
if [ "${PRECOG_E2E_KEEP:-0}" = 1 ]; then
    say "container left running: nsenter -t $LEADER -m -u -i -n -p -C"
    trap - EXIT
fi
summary
