#!/usr/bin/env bash
# bench.sh - grwhd beside its peers, loaded by the same wrk in the same run.
#
# Uses the peer rig (run-peers.sh, BENCH_DIR, by default ../shared/bench
# beside this repository).  Prints the rig's table, then grwhd's own
# figures: events *handled* per second (read back from the spool: an ack
# rate the workers cannot follow is a backlog, not throughput), p99 under
# paced load, and the ratios to nginx+Lua that the targets are set in.
#   DURATION=5 make bench          shorter rows
#   PEERS="nginx-lua grwhd" make bench
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$root/../shared/bench}
[[ -x $BENCH_DIR/run-peers.sh ]] || {
    echo "bench: no peer rig at $BENCH_DIR (set BENCH_DIR)" >&2
    exit 1
}
"$root/scripts/install-deps.sh" --bench
# A writable copy of the rig: its node peer installs its packages in place.
rig=$root/build/bench-rig
if [[ ! -d $rig ]] || [[ $BENCH_DIR/run-peers.sh -nt $rig/run-peers.sh ]]; then
    rm -rf "$rig"
    mkdir -p "$rig"
    cp -R "$BENCH_DIR"/. "$rig"/
    chmod -R u+w "$rig"
fi
BENCH_DIR=$rig

out=$(mktemp -d /tmp/grwhd-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
export GRWHD_CMD="$root/grwhd --listen 127.0.0.1:{port} --secret {secret} \
--script {bench}/grwhd/handler.lua --spool {tmp}/spool.db --workers {workers}"
export KEEP=1

# handled RUN_DIR: events/s the handlers finished during the batch100 row,
# from the first to the last finish recorded in that row's spool.
handled() {
    local db=$1/grwhd-batch100/spool.db
    [[ -f $db ]] || { echo "- - -"; return; }
    sqlite3 -separator ' ' "$db" "SELECT
        count(*),
        (SELECT count(*) FROM events) - (SELECT count(*) FROM outcomes
            WHERE state IN (1, 2)),
        CASE WHEN max(finished_at) > min(finished_at)
        THEN round(count(*) / (max(finished_at) - min(finished_at)))
        ELSE 0 END
        FROM outcomes WHERE state = 1"
}

# solo LABEL ARGS...: grwhd alone under batch100 with extra ARGS; prints
# acked and handled events/s.  The handled rate counts outcomes recorded
# from the first to the last finish, so it is the workers' sustained rate.
solo() {
    local label=$1 dir port pid res db
    shift
    dir=$(mktemp -d "$out/solo.XXXXXX")
    port=$((20000 + RANDOM % 10000))
    "$root/grwhd" --listen "127.0.0.1:$port" --secret s3cr3t \
        --script "$BENCH_DIR/grwhd/handler.lua" --spool "$dir/spool.db" \
        "$@" 2>"$dir/log" &
    pid=$!
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done
    res=$(wrk -t2 -c32 -d"${DURATION:-10}s" -s "$BENCH_DIR/wrk/post.lua" \
        "http://127.0.0.1:$port/webhook?secret=s3cr3t" -- \
        "$BENCH_DIR/payloads/batch100.json" body unique 0 | grep '^RESULT')
    sleep 2
    kill -TERM "$pid"
    wait "$pid" || true
    db=$dir/spool.db
    awk -v label="$label" -v handled="$(sqlite3 "$db" "SELECT CASE WHEN
        max(finished_at) > min(finished_at) THEN round(count(*) /
        (max(finished_at) - min(finished_at))) ELSE 0 END FROM outcomes
        WHERE state = 1")" '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "%-28s acked %8.0f ev/s   handled %8.0f ev/s\n", label,
            v["rps"] * 100, handled }' <<<"$res"
}

if [[ ${ONLY:-} != solo ]]; then
echo "== flat out: single and batch100"
RUN_DIR=$out/flat OUT=$out/flat.tsv "$BENCH_DIR/run-peers.sh" || true
echo
echo "== paced: RATE=1000, single"
RUN_DIR=$out/paced OUT=$out/paced.tsv RATE=1000 PAYLOADS=single \
    PEERS="${PACED_PEERS:-nginx-lua node grwhd}" \
    "$BENCH_DIR/run-peers.sh" || true

read -r done_n left_n handled_eps <<<"$(handled "$out/flat")"
echo
echo "== grwhd"
awk -F'\t' -v handled="$handled_eps" -v done_n="$done_n" \
    -v left_n="$left_n" -v paced="$out/paced.tsv" '
    FNR == 1 { next }
    { rps[$1 "/" $2] = $3; eps[$1 "/" $2] = $4; idle[$1] = $9 }
    END {
        while ((getline line < paced) > 0) {
            split(line, f, "\t")
            if (f[1] == "grwhd") p99 = f[6]
            if (f[1] == "nginx-lua") np99 = f[6]
        }
        g1 = rps["grwhd/single"]; n1 = rps["nginx-lua/single"]
        gb = eps["grwhd/batch100"]; nb = eps["nginx-lua/batch100"]
        printf "single req/s            %s (nginx-lua %s, ratio %.2f, target >= 0.30)\n",
            g1, n1, n1 ? g1 / n1 : 0
        printf "batch100 acked events/s %s (nginx-lua %s, ratio %.2f)\n",
            gb, nb, nb ? gb / nb : 0
        printf "batch100 handled ev/s   %s (ratio %.2f, target >= 0.40); handled %s, left in spool at stop %s\n",
            handled, nb ? handled / nb : 0, done_n, left_n
        printf "p99 ack at ~1000 req/s  %s ms (nginx-lua %s ms; target < 5 ms)\n",
            p99, np99
        printf "idle RSS                %s MiB (target < 20 MiB)\n",
            idle["grwhd"]
    }' "$out/flat.tsv"
fi

echo
echo "== grwhd alone, batch100: workers and de-duplication"
for w in 1 2 4; do
    solo "workers=$w" --workers "$w"
done
solo "workers=2 dedupe off" --workers 2 --dedupe-window 0

echo
echo "== the Lua path alone (decode + meta + call, trivial handler)"
"$root/build/bench_lua" "$BENCH_DIR/grwhd/handler.lua" \
    "$BENCH_DIR/payloads/batch100.json" 1000000
