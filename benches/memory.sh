#!/usr/bin/env bash
# DESIGN §9's memory target measured: "RSS < 150 MiB with a full 64 MiB
# cache and a 10k-service / 100k-endpoint index".
#
# Starts the bench upstream (NXDOMAIN with an SOA for every name outside its
# zone, so every name is answered and cached), then nodens with the default
# cache (cache.max_bytes = 64 MiB), upstream rate shaping lifted, and a
# cluster file of SERVICES services and ENDPOINTS endpoints from
# `nodens-bench cluster-state` (every service has EndpointSlices, 15% are
# headless). Fills the cache with distinct names (the flood workload: a
# fresh random name per query) until nodens_cache_bytes holds at max_bytes
# while more names arrive (the cache is evicting or refusing them). Then
# reads VmRSS and VmHWM of the nodens process from /proc/PID/status and the
# cache and index gauges from /metrics, and prints one summary line and the
# figures, including the RSS after the index loaded and before the fill.
#
#   benches/memory.sh                 # builds the release binaries first
#   SKIP_BUILD=1 benches/memory.sh
#
# Knobs: SERVICES [10000], ENDPOINTS [100000], HEADLESS_SHARE [0.15, as
# benches/cluster_index.rs; 1 publishes every endpoint], MAX_BYTES
# [67108864; the config default], FILL [flood | hit: positive answers, A
# records of the bench zone's names], SOURCE [static: `--cluster-state FILE`
# | hub: a `nodens hub` on loopback serves the file and nodens subscribes,
# as a node agent does in production], LIMIT_MIB [150], WORKERS [0: one per
# CPU], BASE_PORT [5800; the first port tried], NODENS [the binary].
# Exit status: 0 when RSS is under LIMIT_MIB, 1 when not, 2 when the run failed.
# Everything listens on and talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_TAG=memory
BASE_PORT=${BASE_PORT:-5800}
# shellcheck source=benches/compare/lib.sh
source benches/compare/lib.sh
trap 'exit 2' ERR
die() { # lib.sh's, with exit status 2: 1 means over the limit
    log "error: $*"
    exit 2
}

BENCH=target/release/nodens-bench
NODENS=${NODENS:-target/release/nodens} # another build to compare: NODENS=path SKIP_BUILD=1
SERVICES=${SERVICES:-10000}
ENDPOINTS=${ENDPOINTS:-100000}
HEADLESS_SHARE=${HEADLESS_SHARE:-0.15}
MAX_BYTES=${MAX_BYTES:-67108864}
FILL=${FILL:-flood}
SOURCE=${SOURCE:-static}
LIMIT_MIB=${LIMIT_MIB:-150}
WORKERS=${WORKERS:-0}
# 100 namespaces of SERVICES/100 services each.
NAMESPACES=100
((SERVICES % NAMESPACES == 0)) || die "SERVICES must be a multiple of $NAMESPACES"
PER_NS=$((SERVICES / NAMESPACES))
# FILL=hit asks the first HIT_NAMES names of the bench zone: entries of
# these weigh ~640 bytes, so this many overfill MAX_BYTES about twice.
HIT_NAMES=$((MAX_BYTES / 300))
case $FILL in flood | hit) ;; *) die "FILL=$FILL: flood or hit" ;; esac
case $SOURCE in static | hub) ;; *) die "SOURCE=$SOURCE: static or hub" ;; esac

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --release --bin nodens --bin nodens-bench"
    cargo build --release --bin nodens --bin nodens-bench
fi
[[ -x $BENCH && -x $NODENS ]] || die "no $BENCH or $NODENS (build them, or unset SKIP_BUILD)"
command -v curl >/dev/null || die "curl is needed to read /metrics"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    rm -rf "$TMP"
}
trap cleanup EXIT

pick_port
UP_PORT=$PICKED
pick_port
DNS_PORT=$PICKED
pick_port
ADMIN_PORT=$PICKED
pick_port
HUB_PORT=$PICKED
pick_port
HUB_ADMIN_PORT=$PICKED

"$BENCH" cluster-state --namespaces "$NAMESPACES" --services "$PER_NS" \
    --endpoints "$ENDPOINTS" --headless-share "$HEADLESS_SHARE" >"$TMP/cluster.yaml"
log "cluster file: $SERVICES services, $ENDPOINTS endpoints ($(($(stat -c %s "$TMP/cluster.yaml") / 1024)) KiB)"

# Names outside the zone are NXDOMAIN for an hour (the SOA's TTL and
# MINIMUM), so nothing expires while the cache fills.
"$BENCH" upstream --listen "$ADDR:$UP_PORT" --names "$HIT_NAMES" --neg-ttl 3600 \
    >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)

# Shaping lifted (one bench address stands for every client); search domain
# and resolv.conf set here, so nothing of this machine's resolver is read.
printf 'search compute.internal\n' >"$TMP/resolv.conf"
cat >"$TMP/nodens.toml" <<EOF
workers = $WORKERS
[cache]
max_bytes = $MAX_BYTES
[upstream]
resolv_conf = "$TMP/resolv.conf"
per_client_qps = 0
burst = 10000
[search]
domains = ["compute.internal"]
EOF
if [[ $SOURCE == hub ]]; then
    "$NODENS" hub --listen "$ADDR:$HUB_PORT" --admin "$ADDR:$HUB_ADMIN_PORT" \
        --cluster-state "$TMP/cluster.yaml" >"$TMP/hub.log" 2>&1 &
    PIDS+=($!)
    CLUSTER=(--hub "$ADDR:$HUB_PORT")
else
    CLUSTER=(--cluster-state "$TMP/cluster.yaml")
fi
"$NODENS" serve --config "$TMP/nodens.toml" --listen "$ADDR:$DNS_PORT" --admin "$ADDR:$ADMIN_PORT" \
    --upstream "$ADDR:$UP_PORT" --upstream-qps 1000000 "${CLUSTER[@]}" \
    >"$TMP/nodens.log" 2>&1 &
NODENS_PID=$!
PIDS+=("$NODENS_PID")

ZONE_NAMES=$HIT_NAMES # for probe_dns
wait_ready "$NODENS_PID" "$DNS_PORT" || {
    cat "$TMP/nodens.log" >&2
    die "nodens did not answer on $ADDR:$DNS_PORT"
}
for ((i = 0; ; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR:$ADMIN_PORT/readyz") == 200 ]] && break
    ((i < 240)) || die "nodens not ready after 60 s (the cluster index did not load?)"
    sleep 0.25
done

# One gauge from /metrics (0 if absent).
metric() {
    curl -s "http://$ADDR:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }'
}
status_kb() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$NODENS_PID/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# The cache gauges are refreshed once a second.
sleep 1.5
IDX_SERVICES=$(metric nodens_cluster_services)
IDX_ENDPOINTS=$(metric nodens_cluster_endpoints)
[[ $IDX_SERVICES -ge $SERVICES ]] || die "index has $IDX_SERVICES services, expected $SERVICES"
RSS_INDEX_KB=$(status_kb VmRSS)
HWM_INDEX_KB=$(status_kb VmHWM)
log "index loaded: $IDX_SERVICES services, $IDX_ENDPOINTS endpoints published; RSS $(mib "$RSS_INDEX_KB") MiB, HWM $(mib "$HWM_INDEX_KB") MiB"

# Fill. flood: rounds of CHUNK fresh names until the weighed size holds at
# MAX_BYTES (within 3%) for two rounds while the entry count no longer grows
# with the names sent. hit: one pass over HIT_NAMES names (the bench's
# warm-up pass asks each once), which overfills the cache about twice.
CHUNK=$((MAX_BYTES / 400))
SENT=0
FULL=0
PREV_ENTRIES=0
for ((round = 1; round <= 40; round++)); do
    if [[ $FILL == flood ]]; then
        "$BENCH" --server "$ADDR:$DNS_PORT" --workload flood --seed "$round" --queries "$CHUNK" \
            --concurrency 200 --duration 120 --timeout 2 --json >"$TMP/fill.json"
        SENT=$((SENT + $(json_get "$TMP/fill.json" queries.sent)))
    else
        "$BENCH" --server "$ADDR:$DNS_PORT" --workload hit --names "$HIT_NAMES" --hit-names "$HIT_NAMES" \
            --queries 1 --duration 1 --json >"$TMP/fill.json"
        SENT=$(json_get "$TMP/fill.json" warmup.sent)
    fi
    sleep 1.5
    BYTES=$(metric nodens_cache_bytes)
    ENTRIES=$(metric nodens_cache_entries)
    log "round $round: $SENT names sent; cache $ENTRIES entries, $BYTES bytes ($(awk -v b="$BYTES" -v m="$MAX_BYTES" 'BEGIN { printf "%.1f", 100 * b / m }')% of max)"
    [[ $FILL == hit ]] && break
    if ((BYTES * 100 >= MAX_BYTES * 97 && SENT > ENTRIES && ENTRIES <= PREV_ENTRIES + CHUNK / 10)); then
        FULL=$((FULL + 1))
        ((FULL >= 2)) && break
    else
        FULL=0
    fi
    PREV_ENTRIES=$ENTRIES
done
((BYTES * 100 >= MAX_BYTES * 97)) || die "the cache did not fill: $BYTES of $MAX_BYTES bytes"

RSS_KB=$(status_kb VmRSS)
HWM_KB=$(status_kb VmHWM)
ANON_KB=$(status_kb RssAnon)
IDX_SERVICES=$(metric nodens_cluster_services)
IDX_ENDPOINTS=$(metric nodens_cluster_endpoints)
VERDICT=PASS
(((RSS_KB + 1023) / 1024 < LIMIT_MIB)) || VERDICT=FAIL
per_entry() { awk -v a="$1" -v b="$RSS_INDEX_KB" -v n="$ENTRIES" 'BEGIN { if (n > 0) printf "%.0f", (a - b) * 1024 / n; else print 0 }'; }

printf 'memory: %s: RSS %s MiB (limit %s), HWM %s MiB, cache %s entries / %.1f MiB weighed (max %.1f MiB), index %s services / %s endpoints\n' \
    "$VERDICT" "$(mib "$RSS_KB")" "$LIMIT_MIB" "$(mib "$HWM_KB")" "$ENTRIES" \
    "$(awk -v b="$BYTES" 'BEGIN { print b / 1048576 }')" "$(awk -v b="$MAX_BYTES" 'BEGIN { print b / 1048576 }')" \
    "$IDX_SERVICES" "$IDX_ENDPOINTS"
cat <<EOF
  cluster source         $SOURCE
  fill                   $FILL, $SENT distinct names sent
  VmRSS                  $RSS_KB kB ($(mib "$RSS_KB") MiB; anonymous $(mib "$ANON_KB") MiB)
  VmHWM                  $HWM_KB kB ($(mib "$HWM_KB") MiB)
  after index, no cache  VmRSS $(mib "$RSS_INDEX_KB") MiB, VmHWM $(mib "$HWM_INDEX_KB") MiB
  cache growth           $(mib $((RSS_KB - RSS_INDEX_KB))) MiB of RSS for $(awk -v b="$BYTES" 'BEGIN { printf "%.1f", b / 1048576 }') MiB weighed: $(per_entry "$RSS_KB") B of RSS per entry, $((BYTES / (ENTRIES > 0 ? ENTRIES : 1))) B weighed
  nodens_cache_entries   $ENTRIES
  nodens_cache_bytes     $BYTES
  cache.max_bytes        $MAX_BYTES
  nodens_cluster_services  $IDX_SERVICES
  nodens_cluster_endpoints $IDX_ENDPOINTS (published; $ENDPOINTS in slices, headless share $HEADLESS_SHARE)
EOF
[[ $VERDICT == PASS ]] || exit 1
