#!/usr/bin/env bash
# One-command comparison of DNS caches on this machine, side by side in one
# run: nodens, CoreDNS (kubeadm's and NodeLocal DNSCache's Corefiles),
# unbound and dnsmasq, each forwarding to the same bench upstream, and the
# canned-answer responder as the loopback limit. Every figure is also a
# ratio to the limit measured in the same round, because this machine's
# speed drifts by tens of percent within minutes.
#
#   benches/compare.sh [--coredns PATH] [--duration SECONDS] [--rounds N] [--no-install]
#
# Prints one markdown table, writes target/compare/results.{md,json} and a
# PNG plot target/compare/compare.png. Load: nodens-bench (`hit` warm cache,
# then `k8s` pods with ndots:5 and the search list). Everything runs on
# 127.0.0.1. See README.md, "Benchmark harness".
#
# Knobs (environment variables, defaults in brackets; flags win):
#   DURATION [5]        seconds per measured run
#   ROUNDS [1]          rounds; each restarts every server (cold caches); medians
#   CONCURRENCY [200]   lookups in flight in the saturated runs
#   HIT_RATE [20000]    lookups/s of the fixed-rate hit run (latency)
#   K8S_RATE [2000]     lookups/s of the fixed-rate k8s run (~7-8 queries each)
#   RESOLVERS ["canned nodens coredns-kubeadm coredns-nodelocal unbound dnsmasq"]
#   COREDNS [coredns on PATH]  the CoreDNS binary
#   PIN [1]             1: servers on SERVER_CPU, bench and upstream on CLIENT_CPU
#   SERVER_CPU [0] CLIENT_CPU [1]
#   BASE_PORT [5500]    first port tried
#   INSTALL [1]         1: apt-get/pip install what is missing (unbound, dnsmasq, matplotlib)
#   SKIP_BUILD [0]      1: use the binaries already in target/release
#   OUT_DIR [target/compare]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/benches/compare"
LOG_TAG=compare
# shellcheck source=compare/lib.sh
source "$HERE/lib.sh"

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-1}
CONCURRENCY=${CONCURRENCY:-200}
HIT_RATE=${HIT_RATE:-20000}
K8S_RATE=${K8S_RATE:-2000}
RESOLVERS=${RESOLVERS:-"canned nodens coredns-kubeadm coredns-nodelocal unbound dnsmasq"}
COREDNS=${COREDNS:-}
PIN=${PIN:-1}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
INSTALL=${INSTALL:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT_DIR=${OUT_DIR:-$ROOT/target/compare}
ZONE_NAMES=10000

while (($#)); do
    case $1 in
    --coredns) COREDNS=${2:?--coredns needs a path}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

BENCH="$ROOT/target/release/nodens-bench"
NODENS_BIN="$ROOT/target/release/nodens"
CANNED_BIN="$ROOT/target/release/examples/canned_responder"

# ---------------------------------------------------------------- tools

for tool in ss awk taskset getconf python3; do
    if ! command -v "$tool" >/dev/null; then
        case $tool in
        ss) apt_install iproute2 || true ;;
        taskset) apt_install util-linux || true ;;
        python3) apt_install python3 python3-pip || true ;;
        esac
        command -v "$tool" >/dev/null || die "$tool not found"
    fi
done
command -v unbound >/dev/null || apt_install unbound || log "unbound unavailable"
# dnsmasq-base is the binary without the system service and its config.
command -v dnsmasq >/dev/null || apt_install dnsmasq-base || log "dnsmasq unavailable"
if [[ -z $COREDNS ]]; then
    COREDNS=$(command -v coredns || true)
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    if [[ $INSTALL == 1 ]]; then
        log "pip install matplotlib"
        python3 -m pip install --quiet matplotlib >/dev/null 2>&1 ||
            python3 -m pip install --quiet --break-system-packages matplotlib >/dev/null 2>&1 ||
            apt_install python3-matplotlib || true
    fi
    python3 -c 'import matplotlib' 2>/dev/null || log "matplotlib unavailable: no plot"
fi

if [[ $PIN == 1 ]] && (($(nproc) < 2)); then
    log "fewer than 2 CPUs: not pinning"
    PIN=0
fi
if [[ $PIN == 1 ]]; then
    SRV_PIN=(taskset -c "$SERVER_CPU")
    CLI_PIN=(taskset -c "$CLIENT_CPU")
else
    SRV_PIN=()
    CLI_PIN=()
fi

# ---------------------------------------------------------------- build

if [[ $SKIP_BUILD != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release --bin nodens-bench --example canned_responder) ||
        die "cannot build nodens-bench and the canned responder"
    (cd "$ROOT" && cargo build --release --bin nodens) || log "nodens did not build; its rows will say so"
fi
[[ -x $BENCH ]] || die "$BENCH missing"
[[ -x $CANNED_BIN ]] || die "$CANNED_BIN missing"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/nodens-compare.XXXXXX")
RAW="$OUT_DIR/raw"
rm -rf "$RAW"
mkdir -p "$RAW"
declare -A PID=() PORT=() STATUS=() VERSION=()
UPSTREAM_PID=

cleanup() {
    local rc=$?
    for s in "${!PID[@]}"; do stop_pid "${PID[$s]}"; done
    [[ -n $UPSTREAM_PID ]] && stop_pid "$UPSTREAM_PID"
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- upstream

pick_port
UPORT=$PICKED
"${CLI_PIN[@]}" "$BENCH" upstream --listen "$ADDR:$UPORT" --names "$ZONE_NAMES" >"$TMP/upstream.log" 2>&1 &
UPSTREAM_PID=$!
wait_ready "$UPSTREAM_PID" "$UPORT" || { cat "$TMP/upstream.log" >&2; die "the bench upstream did not start"; }
log "bench upstream: pid $UPSTREAM_PID on $ADDR:$UPORT"

# ---------------------------------------------------------------- servers

version_of() {
    case $1 in
    canned) echo "examples/canned_responder.rs" ;;
    nodens) "$NODENS_BIN" --version 2>/dev/null | head -1 ;;
    coredns-*) "$COREDNS" -version 2>/dev/null | head -1 ;;
    unbound) unbound -V 2>/dev/null | awk '/^Version/ { print "unbound " $2; exit }' ;;
    dnsmasq) dnsmasq --version 2>/dev/null | awk 'NR == 1 { print "dnsmasq " $3 }' ;;
    esac
}

# Why a server cannot run here, or nothing.
unavailable() {
    case $1 in
    canned) [[ -x $CANNED_BIN ]] || echo "not built" ;;
    nodens) [[ -x $NODENS_BIN ]] || echo "not built" ;;
    coredns-*) [[ -n $COREDNS && -x $COREDNS ]] || echo "not found" ;;
    unbound) command -v unbound >/dev/null || echo "not installed" ;;
    dnsmasq) command -v dnsmasq >/dev/null || echo "not installed" ;;
    *) echo "unknown server" ;;
    esac
}

start_server() { # name -> sets PID[name], PORT[name]; 1 on failure (STATUS says why)
    local s=$1 port dir="$TMP/$1"
    mkdir -p "$dir"
    pick_port
    port=$PICKED
    PORT[$s]=$port
    case $s in
    canned)
        "${SRV_PIN[@]}" "$CANNED_BIN" --listen "$ADDR:$port" --threads 1 >"$dir/log" 2>&1 &
        ;;
    nodens)
        # As a node runs it: the cluster zone from its own index (the same
        # services the bench upstream serves to the others, in kube-dns'
        # place) and the node's search domain, when this nodens has those
        # flags. Upstream rate shaping is lifted: no other server shapes, and
        # the bench is one client address, which per-client fairness would
        # throttle as if it were one runaway pod.
        local extra=() help
        help=$("$NODENS_BIN" serve --help 2>&1 || true)
        if [[ $help == *--cluster-state* ]]; then
            "$BENCH" cluster-state >"$dir/cluster.yaml"
            extra+=(--cluster-state "$dir/cluster.yaml")
        fi
        if [[ $help == *--search-domain* ]]; then extra+=(--search-domain compute.internal); fi
        if [[ -f $ROOT/config/nodens.toml ]]; then
            sed -E -e 's/^qps = .*/qps = 1000000/' -e 's/^per_client_qps = .*/per_client_qps = 1000000/' \
                "$ROOT/config/nodens.toml" >"$dir/nodens.toml"
            extra+=(--config "$dir/nodens.toml")
        fi
        "${SRV_PIN[@]}" "$NODENS_BIN" serve --listen "$ADDR:$port" --upstream "$ADDR:$UPORT" \
            --admin "$ADDR:0" "${extra[@]}" >"$dir/log" 2>&1 &
        ;;
    coredns-kubeadm | coredns-nodelocal)
        local health ready metrics
        pick_port; health=$PICKED
        pick_port; ready=$PICKED
        pick_port; metrics=$PICKED
        sed -e "s/@PORT@/$port/g" -e "s/@UPSTREAM@/$UPORT/g" -e "s/@HEALTH@/$health/g" \
            -e "s/@READY@/$ready/g" -e "s/@METRICS@/$metrics/g" \
            "$HERE/Corefile.${s#coredns-}" >"$dir/Corefile"
        (cd "$dir" && exec "${SRV_PIN[@]}" "$COREDNS" -conf "$dir/Corefile") >"$dir/log" 2>&1 &
        ;;
    unbound)
        # The same unbound as every bench script runs (compare/lib.sh).
        unbound_conf "$dir" "$port" "$ADDR@$UPORT"
        "${SRV_PIN[@]}" unbound -d -c "$dir/unbound.conf" >"$dir/log" 2>&1 &
        ;;
    dnsmasq)
        "${SRV_PIN[@]}" dnsmasq --no-resolv --server="$ADDR#$UPORT" --cache-size=10000 --port "$port" \
            --listen-address "$ADDR" --bind-interfaces --no-daemon --conf-file=/dev/null --no-hosts \
            >"$dir/log" 2>&1 &
        ;;
    esac
    PID[$s]=$!
    local rc=0 st=0
    wait_ready "${PID[$s]}" "$port" || rc=$?
    if ((rc != 0)); then
        kill "${PID[$s]}" 2>/dev/null || true
        wait "${PID[$s]}" 2>/dev/null || st=$?
        unset 'PID[$s]'
        if ((rc == 1)); then
            STATUS[$s]="exited at start (status $st)"
        else
            STATUS[$s]="no answer within 10 s"
        fi
        log "$s: ${STATUS[$s]}; log tail:"
        tail -n 5 "$dir/log" >&2 || true
        return 1
    fi
    log "$s: pid ${PID[$s]} on $ADDR:$port"
}

stop_server() {
    local s=$1
    [[ -n ${PID[$s]:-} ]] || return 0
    stop_pid "${PID[$s]}"
    unset 'PID[$s]'
}

# One measured run; appends a line to $OUT_DIR/raw/runs.tsv:
# round server workload kind json cpu_ticks rss_kb loadavg
measure() { # round server workload kind
    local r=$1 s=$2 wl=$3 kind=$4 out="$RAW/$1.$2.$3.$4.json" c0 c1 args=()
    case $kind in
    sat) args=(--concurrency "$CONCURRENCY") ;;
    lat) if [[ $wl == hit ]]; then args=(--rate "$HIT_RATE"); else args=(--rate "$K8S_RATE"); fi ;;
    esac
    # hit warms itself (one pass over its names) before the saturated run.
    if [[ $wl == hit && $kind == lat ]]; then args+=(--warm false); fi
    c0=$(cpu_ticks "${PID[$s]}") || return 1
    if ! "${CLI_PIN[@]}" "$BENCH" --server "$ADDR:${PORT[$s]}" --upstream-stats "$ADDR:$UPORT" \
        --names "$ZONE_NAMES" --workload "$wl" --duration "$DURATION" --timeout 1 --seed "$r" \
        "${args[@]}" --json >"$out" 2>"$out.err"; then
        log "$s: nodens-bench failed: $(tail -n 3 "$out.err")"
        return 1
    fi
    c1=$(cpu_ticks "${PID[$s]}") || return 1
    # The 1-minute load average after the run: above ~2 on this 2-CPU
    # machine, something else was competing and the report says so.
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$s" "$wl" "$kind" "$out" "$((c1 - c0))" \
        "$(rss_kb "${PID[$s]}")" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RAW/runs.tsv"
    log "$s $wl $kind: $(json_get "$out" qps) qps, p50 $(json_get "$out" latency_us.p50) us," \
        "p99 $(json_get "$out" latency_us.p99) us, $(json_get "$out" queries.timed_out) lost"
}

# ---------------------------------------------------------------- rounds

: >"$RAW/runs.tsv"
ACTIVE=()
for s in $RESOLVERS; do
    why=$(unavailable "$s")
    if [[ -n $why ]]; then
        STATUS[$s]=$why
        log "$s: $why"
    else
        ACTIVE+=("$s")
        VERSION[$s]=$(version_of "$s")
    fi
done
[[ " ${ACTIVE[*]} " == *" canned "* ]] || die "the canned responder (the limit) must be among RESOLVERS"

n=${#ACTIVE[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((j = 0; j < n; j++)); do
        s=${ACTIVE[$(((j + r - 1) % n))]} # rotate the order between rounds
        [[ -n ${STATUS[$s]:-} ]] && continue
        log "round $r/$ROUNDS: $s"
        start_server "$s" || continue
        # k8s first, from a cold cache, at a fixed rate: the same lookups for
        # every server, so upstream queries per lookup compare.
        for run in "k8s lat" "k8s sat" "hit sat" "hit lat"; do
            # shellcheck disable=SC2086
            measure "$r" "$s" $run || { STATUS[$s]="failed during $run"; break; }
        done
        stop_server "$s"
    done
done

# ---------------------------------------------------------------- report

{
    printf 'server\tstatus\tversion\n'
    for s in $RESOLVERS; do
        printf '%s\t%s\t%s\n' "$s" "${STATUS[$s]:-ok}" "${VERSION[$s]:-}"
    done
} >"$RAW/servers.tsv"
python3 "$HERE/report.py" --raw "$RAW" --out "$OUT_DIR" --clk-tck "$CLK_TCK" --duration "$DURATION" \
    --rounds "$ROUNDS" --concurrency "$CONCURRENCY" --hit-rate "$HIT_RATE" --k8s-rate "$K8S_RATE" --pin "$PIN"
if python3 -c 'import matplotlib' 2>/dev/null; then
    python3 "$HERE/plot.py" "$OUT_DIR/results.json" "$OUT_DIR/compare.png" && log "plot: $OUT_DIR/compare.png"
fi
log "results: $OUT_DIR/results.md, $OUT_DIR/results.json, raw runs in $RAW"
