# Shared helpers of the end-to-end scripts in this directory (sourced, not run).
#
# They keep the tally of checks, install the tools a script needs, build the deb, and make the
# cached Debian root filesystems both scripts boot. Everything cached lives outside the source
# tree, under $PRECOG_E2E_CACHE (default /var/cache/precog-e2e).

E2E_PASSED=0
E2E_FAILED=0
E2E_CACHE=${PRECOG_E2E_CACHE:-/var/cache/precog-e2e}
E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

say() { printf '%s\n' "$*" >&2; }

# Ends the script as a skip: the precondition is missing, not the product broken.
skip() {
    printf 'SKIPPED: %s\n' "$*"
    exit 0
}

pass() {
    E2E_PASSED=$((E2E_PASSED + 1))
    printf 'ok   %s\n' "$1"
}

fail() {
    E2E_FAILED=$((E2E_FAILED + 1))
    printf 'FAIL %s\n' "$1"
    if [ -n "${2:-}" ]; then
        printf '%s\n' "$2" | sed 's/^/     | /' | head -n 40
    fi
}

# check NAME COMMAND...: passes when COMMAND exits 0; shows its output when it does not.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        pass "$name"
    else
        fail "$name" "$out"
    fi
}

# check_fails NAME COMMAND...: passes when COMMAND exits non-zero (a refusal that must happen).
check_fails() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        fail "$name" "expected a refusal, got success: $out"
    else
        pass "$name"
    fi
}

# check_denied NAME PATTERN COMMAND...: passes when COMMAND fails with output matching PATTERN
# (an extended regular expression, case-insensitive), so a refusal is told from any other error.
check_denied() {
    local name=$1 pattern=$2 out
    shift 2
    if out=$("$@" 2>&1); then
        fail "$name" "expected a refusal, got success: $out"
    elif printf '%s\n' "$out" | grep -Eqi "$pattern"; then
        pass "$name"
    else
        fail "$name" "failed, but not with a refusal: $out"
    fi
}

# Prints the final tally; the exit status says whether everything passed.
summary() {
    printf '%d passed, %d failed\n' "$E2E_PASSED" "$E2E_FAILED"
    [ "$E2E_FAILED" -eq 0 ]
}

# apt_install PACKAGE...: installs the packages that are missing, quietly.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The Debian mirror this host's apt already uses (the first non-security one).
host_mirror() {
    local mirror
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -E '^[[:space:]]*(deb[[:space:]]|URIs:)' | grep -v security \
        | grep -Eo 'https?://[^[:space:]]+/debian/?' | head -n 1)
    printf '%s\n' "${mirror:-http://deb.debian.org/debian}"
}

# build_deb OUTDIR: builds the precog deb with cargo-deb and prints its path.
build_deb() {
    local outdir=$1
    mkdir -p "$outdir"
    if ! cargo deb --version >/dev/null 2>&1; then
        say "installing cargo-deb"
        cargo install --locked --quiet cargo-deb >&2 || return 1
    fi
    rm -f "$outdir"/precog_*.deb
    (cd "$E2E_ROOT" && cargo deb --quiet --output "$outdir" >&2) || return 1
    ls "$outdir"/precog_*.deb
}

# The packages both scripts' guests need besides minbase: systemd as PID 1, the system bus, and
# what the precog deb depends on.
E2E_INCLUDES=systemd,systemd-sysv,dbus,procps

# bookworm_rootfs: a debootstrapped bookworm, made once and cached (remade when E2E_INCLUDES
# changes); prints its path. The scripts never write into it: nspawn runs it under an overlay and
# the VM boots a copy packed into an initramfs.
bookworm_rootfs() {
    local dir="$E2E_CACHE/bookworm" stamp
    stamp="$E2E_INCLUDES"
    if [ "$(cat "$dir/.e2e-includes" 2>/dev/null)" != "$stamp" ]; then
        say "debootstrapping bookworm into $dir (once, about a minute)"
        rm -rf "$dir.tmp"
        mkdir -p "$E2E_CACHE"
        debootstrap --variant=minbase --include="$E2E_INCLUDES" bookworm "$dir.tmp" \
            "$(host_mirror)" >"$E2E_CACHE/debootstrap.log" 2>&1 || {
            say "debootstrap failed, see $E2E_CACHE/debootstrap.log"
            return 1
        }
        # Nothing in the guests reads these; dropping them keeps the VM's initramfs small.
        rm -rf "$dir.tmp"/usr/share/doc/* "$dir.tmp"/usr/share/man/* \
            "$dir.tmp"/usr/share/locale/* "$dir.tmp"/var/cache/apt/*.bin \
            "$dir.tmp"/var/lib/apt/lists/*
        printf '%s\n' "$stamp" >"$dir.tmp/.e2e-includes"
        rm -rf "$dir"
        mv "$dir.tmp" "$dir"
    fi
    printf '%s\n' "$dir"
}
