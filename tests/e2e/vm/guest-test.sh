#!/bin/bash
# The checks vm.sh runs inside the cgroup-v2 guest, as a boot-time unit. Installs the deb, starts
# precogd through its socket, and checks the pools' cgroups, the workers' user, the CPU quota and
# the memory limit for real. Prints one line per check and the tally; vm.sh reads them from the
# second serial port.
set -u
# The results go to a serial port that is a tty: no colours in what systemd's tools print there.
export SYSTEMD_COLORS=0

. /usr/local/lib/precog-e2e/lib.sh

SOCK=/run/precog/precogd.sock
DEB=/root/precog.deb

main_pid() { systemctl show -P MainPID precogd.service; }

service_cgroup() {
    printf '/sys/fs/cgroup%s\n' "$(systemctl show -P ControlGroup precogd.service)"
}

# has_value FILE EXPECTED: the cgroup file holds exactly EXPECTED.
has_value() {
    local actual
    actual=$(cat "$1" 2>&1) || { echo "$actual"; return 1; }
    [ "$actual" = "$2" ] || { echo "$1 is '$actual', expected '$2'"; return 1; }
}

# The pool's cgroup: named after the pool, beside the daemon's own `daemon/` leaf (a pool may
# not be called `daemon`).
pool_cgroup() {
    printf '%s\n' "$(service_cgroup)/$1"
}

daemon_in_its_leaf() { grep -qx "$(main_pid)" "$(service_cgroup)/daemon/cgroup.procs"; }

workers_run_as_precog_worker() {
    local pool=$1 pids pid uid worker_uid count=0
    worker_uid=$(id -u precog-worker) || return 1
    pids=$(cat $(find "$(pool_cgroup "$pool")" -name cgroup.procs))
    for pid in $pids; do
        uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status") || continue
        [ "$uid" = "$worker_uid" ] || { echo "pid $pid runs as uid $uid"; return 1; }
        count=$((count + 1))
    done
    [ "$count" -gt 0 ] || { echo "no worker in $(pool_cgroup "$pool")"; return 1; }
}

cpu_usage_usec() { awk '$1 == "usage_usec" { print $2 }' "$(pool_cgroup e2e)/cpu.stat"; }

# A job that spins for 3 s of wall time under a 20% quota gets about 0.6 s of CPU: measured from
# the pool cgroup's own accounting, not from what the worker says.
burn_gets_a_fifth_of_a_core() {
    local before after start end out
    before=$(cpu_usage_usec)
    start=$(date +%s%N)
    out=$(precogctl --socket $SOCK run burn --session vm ms=3000 2>&1) || { echo "$out"; return 1; }
    end=$(date +%s%N)
    after=$(cpu_usage_usec)
    awk -v cpu=$((after - before)) -v wall=$(((end - start) / 1000)) 'BEGIN {
        share = cpu / wall
        printf "the burn job got %.3f s of CPU in %.3f s: %.0f%% of a core\n",
            cpu / 1e6, wall / 1e6, share * 100
        exit !(share > 0.12 && share < 0.30)
    }' | tee /run/precog-e2e-cpu-share
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "worker said: $out"; return 1; }
}

# request JSON: sends one request line to the socket and prints the reply line as it came (the
# reason of an error is a field of the reply that precogctl does not print).
request() {
    perl -MIO::Socket::UNIX -e '
        my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n";
        print $s "$ARGV[1]\n";
        print scalar(<$s>);' "$SOCK" "$1"
}

# The cpu.weight of each worker leaf in the e2e pool.
leaf_weights() { cat "$(pool_cgroup e2e)"/*/cpu.weight 2>/dev/null | tr '\n' ' '; }

# wait_for_leaf_weight W: within 10 s, a worker leaf of the e2e pool has cpu.weight W.
wait_for_leaf_weight() {
    local i
    for i in $(seq 100); do
        case " $(leaf_weights) " in *" $1 "*) return 0 ;; esac
        sleep 0.1
    done
    echo "worker leaves' cpu.weight: $(leaf_weights); expected $1"
    return 1
}

# An event makes `spin`'s input known and a hint makes it likely: precog runs it as a guess,
# whose worker leaf gets the lowest weight while nobody waits for it.
guess_runs_at_the_lowest_weight() {
    request '{"op":"event","session":"guess","type":"page_view","attrs":{"ms":6000}}' \
        >/dev/null || return 1
    request '{"op":"hint","session":"guess","predictions":[{"process":"spin","p":0.99}]}' \
        >/dev/null || return 1
    wait_for_leaf_weight 1
}

# A run that asks for the guess joins it, and the worker gets the default weight back.
joined_guess_gets_the_default_weight() {
    local pid out=/run/precog-e2e-join
    precogctl --socket $SOCK run spin --session guess ms=6000 >"$out" 2>&1 &
    pid=$!
    wait_for_leaf_weight 100 || { wait "$pid"; return 1; }
    wait "$pid" || { cat "$out"; return 1; }
    grep -q 'served: inflight' "$out" || { cat "$out"; return 1; }
}

hog_is_killed_as_oom() {
    local reply
    reply=$(request '{"op":"run","session":"vm","process":"hog","inputs":{"mb":200}}') || return 1
    printf '%s\n' "$reply"
    printf '%s\n' "$reply" | grep -q '"code":"worker_failed"' \
        && printf '%s\n' "$reply" | grep -q '"reason":"oom"'
}

oom_kill_counted() {
    local kills
    kills=$(awk '$1 == "oom_kill" { print $2 }' "$(pool_cgroup e2e)/memory.events")
    [ "${kills:-0}" -gt 0 ] || { echo "memory.events oom_kill is ${kills:-missing}"; return 1; }
}

echo "guest: $(uname -r), cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"

check "dpkg installs the deb" dpkg -i "$DEB"
check "the configuration with the test pool is valid" precogd --check-config
check "a connection starts precogd" precogctl --socket $SOCK ping
check "precogd is active" test "$(systemctl is-active precogd.service)" = active
sleep 2
cg=$(service_cgroup)
echo "service cgroup: $cg"
check "precogd moved itself into the daemon/ leaf" daemon_in_its_leaf

for pool in shop e2e; do
    check "the $pool pool's cgroup sits in precogd.service's subtree" test -d "$(pool_cgroup $pool)"
done
shop=$(pool_cgroup shop)
e2e=$(pool_cgroup e2e)
check "shop cpu.max is the 150% quota" has_value "$shop/cpu.max" "150000 100000"
check "shop cpu.weight" has_value "$shop/cpu.weight" 100
check "shop cpuset.cpus" has_value "$shop/cpuset.cpus" 0-1
check "shop memory.max" has_value "$shop/memory.max" 268435456
check "shop memory.min is memory_reserve" has_value "$shop/memory.min" 67108864
check "e2e cpu.max is the 20% quota" has_value "$e2e/cpu.max" "20000 100000"
check "e2e cpu.weight" has_value "$e2e/cpu.weight" 50
check "e2e cpuset.cpus" has_value "$e2e/cpuset.cpus" 0
check "e2e memory.max" has_value "$e2e/memory.max" 67108864
check "e2e memory.min is memory_reserve" has_value "$e2e/memory.min" 16777216

check "shop workers run as precog-worker" workers_run_as_precog_worker shop
check "e2e workers run as precog-worker" workers_run_as_precog_worker e2e
check "validate_postal_code runs on the shop pool" precogctl --socket $SOCK run \
    validate_postal_code --session vm country=DE postal_code=10115

check "a guess runs with its worker leaf at cpu.weight 1" guess_runs_at_the_lowest_weight
check "a run joining the guess puts the leaf back to cpu.weight 100" \
    joined_guess_gets_the_default_weight

check "a CPU-bound job under a 20% quota gets about a fifth of a core" burn_gets_a_fifth_of_a_core
echo "measured: $(cat /run/precog-e2e-cpu-share 2>/dev/null)"
check "a job allocating past memory_max fails with worker_failed, reason oom" hog_is_killed_as_oom
check "the kernel counted the OOM kill in the e2e pool" oom_kill_counted
check "precogd survives its worker's OOM kill" \
    test "$(systemctl is-active precogd.service)" = active
check "the pool serves again after the OOM kill" \
    precogctl --socket $SOCK run burn --session vm ms=10

if [ "$E2E_FAILED" -gt 0 ]; then
    echo "---- journal of precogd ----"
    journalctl -u precogd.service --no-pager -n 80 -o short-precise
fi
summary
