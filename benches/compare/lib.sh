# Shell functions shared by the bench scripts (benches/compare.sh,
# compare/ceiling.sh, dnsperf/run.sh, shortcut_modes.sh, memory.sh; sourced,
# not run). The same approach as benches/dnsperf/run.sh: free
# ports found with ss, CPU time from /proc/PID/stat, servers and load pinned
# to different CPUs with taskset. Everything listens on and talks to
# 127.0.0.1 only.

ADDR=127.0.0.1 # never send traffic anywhere else
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "${LOG_TAG:-compare}" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

port_free() { [[ -z $(ss -Hlnu "sport = :$1") && -z $(ss -Hlnt "sport = :$1") ]]; }

# Sets PICKED to the next free port from next_port on (no subshell, so
# next_port advances between calls).
next_port=${BASE_PORT:-5500}
pick_port() {
    while ! port_free "$next_port"; do next_port=$((next_port + 1)); done
    PICKED=$next_port
    next_port=$((next_port + 1))
}

# utime+stime (clock ticks) of a whole process, all threads, live and exited.
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat") || return 1
    stat=${stat##*) } # comm may contain spaces; fields restart at "state"
    awk '{ print $12 + $13 }' <<<"$stat"
}

# Resident set size in KiB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# One field of a JSON file, by dotted path ("queries.sent"); empty if absent.
json_get() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)
EOF
}

# 0 if a DNS server on $ADDR:$1 answers NOERROR for a name of the bench
# zone (one query, via nodens-bench itself: no dig needed).
probe_dns() {
    local out
    out=$("$BENCH" --server "$ADDR:$1" --workload hit --hit-names 1 --names "${ZONE_NAMES:-10000}" \
        --queries 1 --warm false --timeout 0.5 --duration 2 --json 2>/dev/null) || return 1
    [[ $out == *'"NOERROR": 1'* ]]
}

# Waits for pid $1 to answer on port $2: 0 once it does, 1 if it exited,
# 2 if it did not answer within 10 s.
wait_ready() {
    local pid=$1 port=$2 i
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        probe_dns "$port" && return 0
        sleep 0.25
    done
    return 2
}

# Stops a process we started, by its pid.
stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Installs Debian packages if we can (root and apt-get); never fatal.
apt_install() {
    if [[ ${INSTALL:-1} != 1 ]]; then
        log "not installing $* (INSTALL=0)"
        return 1
    fi
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        log "cannot install $* (needs root and apt-get)"
        return 1
    fi
    if [[ -z ${APT_UPDATED:-} ]]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
        APT_UPDATED=1
    fi
    # The packages' own services (unbound on port 53) must not start: this
    # script runs its own instances. policy-rc.d is how Debian says so; the
    # one we add (only if there is none) goes again after the install.
    local made_policy=0 rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || rc=$?
    if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
    return "$rc"
}

# Writes the unbound config every comparison runs (2 threads, a forwarding
# cache, as a node would run it) to DIR/unbound.conf: listening on
# ADDR@PORT, forwarding everything to FORWARD (ip@port).
unbound_conf() { # dir port forward
    cat >"$1/unbound.conf" <<EOF2
server:
    verbosity: 0
    num-threads: 2
    so-reuseport: yes
    interface: $ADDR@$2
    port: $2
    do-ip6: no
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    chroot: ""
    username: ""
    directory: "$1"
    pidfile: ""
    use-syslog: no
    logfile: ""
    do-daemonize: no
    module-config: "iterator"
    log-queries: no
    log-replies: no
    # "test." is one of unbound's built-in RFC 6761 local zones (it would
    # answer NXDOMAIN itself); let it be forwarded like any other name.
    local-zone: "test." nodefault
    msg-cache-size: 64m
    rrset-cache-size: 128m
    prefetch: no
    num-queries-per-thread: 4096
    outgoing-range: 8192
    so-rcvbuf: 4m
    so-sndbuf: 4m
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: $3
EOF2
}
