#!/usr/bin/env bash
# The log over years, measured: the size of a month of log in PostgreSQL and in Parquet, the
# speed of sealing and of archiving, and the cost to writers of a sealer running beside them.
#
#   pg-audit-bench/archive.sh [ROWS]      # default 1,000,000 log rows; needs pgbench
#   WRITERS=0 pg-audit-bench/archive.sh   # without the writers' runs (most of the time)
#
# A throwaway server (release build of the program). The month: ROWS log rows written by the
# triggers (inserts of a users table, then updates of a third of them), moved into a partition
# eight months back. Writers: pgbench, single-row INSERTs into an audited table, 15 s per run,
# alternating runs without a sealer, with one seal halfway through the run, with `pg-audit seal
# --every 1` running, with `seal --every 0` sealing back-to-back on one connection, and with
# `pg-audit seal` started again as soon as it ends; the ratios are
# the medians' (with/without).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
bindir=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || true)}
[ -x "$bindir/initdb" ] || bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
work=$(mktemp -d /tmp/pg-audit-archive-bench.XXXXXX)
chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown postgres "$work"
trap '"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat >>"$work/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$work'
shared_buffers = 512MB
max_wal_size = 4GB
EOF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/log" -w start >/dev/null
cargo build -q --release -p pg-audit-cli
cli=target/release/pg-audit
export DATABASE_URL="postgres://postgres@%2F${work//\//%2F}/postgres"
psql=("$bindir/psql" -h "$work" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt)
$cli sql table | "${psql[@]}" >/dev/null
"${psql[@]}" -c "CREATE TABLE users (id bigint PRIMARY KEY, email text, name text, plan text, updated_at timestamptz)"
$cli sql trigger --table users --primary-key id | "${psql[@]}" >/dev/null
inserts=$((rows * 3 / 4))
"${psql[@]}" <<SQL
DO \$\$
DECLARE lo timestamptz := date_trunc('month', now() - interval '8 months');
BEGIN
    EXECUTE format('CREATE TABLE audit.auditlog_month PARTITION OF audit.auditlog FOR VALUES FROM (%L) TO (%L)', lo, lo + interval '1 month');
END \$\$;
INSERT INTO users SELECT g, 'user' || g || '@example.com', 'Name ' || g, 'free', now() FROM generate_series(1, $inserts) AS g;
UPDATE users SET plan = 'pro', updated_at = now() WHERE id % 3 = 0;
UPDATE audit.auditlog SET changed_at = date_trunc('month', now() - interval '8 months') + id * interval '1 ms';
VACUUM ANALYZE audit.auditlog;
SQL
n=$("${psql[@]}" -c "SELECT count(*) FROM audit.auditlog_month")
pg_bytes=$("${psql[@]}" -c "SELECT pg_total_relation_size('audit.auditlog_month')")
ms() { date +%s%N | cut -c1-13; }
# Each step's wall time and the program's peak memory (maximum resident set, KiB).
run() { /usr/bin/time -f %M -o "$work/rss" "$@" >/dev/null; cat "$work/rss"; }
t0=$(ms); seal_kib=$(run $cli seal); t1=$(ms)
seal_ms=$((t1 - t0))
t0=$(ms); archive_kib=$(run $cli archive --older-than '6 months' --to "$work/archive"); t1=$(ms)
archive_ms=$((t1 - t0))
file_bytes=$(stat -c %s "$work"/archive/*.parquet)
t0=$(ms); $cli history users 42 --archived >/dev/null; t1=$(ms)
history_ms=$((t1 - t0))
t0=$(ms); verify_kib=$(run $cli verify); t1=$(ms)
verify_ms=$((t1 - t0))
t0=$(ms); verify1_kib=$(run $cli verify --jobs 1); t1=$(ms)
verify1_ms=$((t1 - t0))
# The live log too: a second month, written now and sealed, so verify reads both.
"${psql[@]}" -c "UPDATE users SET plan = 'team', updated_at = now() WHERE id % 4 = 0"
live=$("${psql[@]}" -c "SELECT count(*) FROM audit.auditlog")
$cli seal >/dev/null
t0=$(ms); verify_all_kib=$(run $cli verify); t1=$(ms)
verify_all_ms=$((t1 - t0))

# Writers with and without a sealer beside them, with 1 client (a core left for the sealer:
# what remains is waiting) and 2 (both cores busy: the sealer's CPU shows too). While the
# sealer runs, the backends waiting on a lock are sampled every 50 ms.
"${psql[@]}" -c "CREATE TABLE hot (id bigserial PRIMARY KEY, v text)"
$cli sql trigger --table hot --primary-key id | "${psql[@]}" >/dev/null
echo "INSERT INTO hot (v) VALUES ('x');" >"$work/insert.sql"
bench() { "$bindir/pgbench" -h "$work" -U postgres -n -c "$1" -j "$1" -T 15 -f "$work/insert.sql" postgres 2>/dev/null | awk '/^tps/ {print int($3)}'; }
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
echo "month of log: $n rows; PostgreSQL $((pg_bytes / 1048576)) MiB (table and indexes), Parquet $((file_bytes / 1048576)) MiB (zstd)"
per_s() { echo $(($1 * 1000 / ($2 > 0 ? $2 : 1))); }
echo "seal: $seal_ms ms, $(per_s "$n" "$seal_ms") rows/s, peak $((seal_kib / 1024)) MiB"
echo "archive (write, read back and compare, drop): $archive_ms ms, $(per_s "$n" "$archive_ms") rows/s, peak $((archive_kib / 1024)) MiB"
echo "history --archived of one record: $history_ms ms (the program's start included)"
echo "verify (default --jobs; the archived month read from its file, every seal recomputed): $verify_ms ms, $(per_s "$n" "$verify_ms") rows/s, peak $((verify_kib / 1024)) MiB"
echo "verify --jobs 1 (one session) of the same: $verify1_ms ms, $(per_s "$n" "$verify1_ms") rows/s, peak $((verify1_kib / 1024)) MiB"
echo "verify of the archived month and $live live rows: $verify_all_ms ms, $(per_s $((n + live)) "$verify_all_ms") rows/s, peak $((verify_all_kib / 1024)) MiB"
# A sealer at a cadence: once per 15 s run, halfway, sealing what that run wrote. The work a
# seal does grows with the rows written since the last one, so this is the load of sealing once
# a minute at any write rate (a minute's rows, once a minute).
[ "${WRITERS:-1}" = 0 ] && exit 0  # WRITERS=0: the log's steps only
for clients in 1 2; do
    without=(); with=(); cadence=(); every=(); nonstop=()
    for _ in 1 2 3; do
        without+=("$(bench "$clients")")
        $cli seal >/dev/null 2>&1
        (sleep 7; $cli seal >/dev/null 2>&1) & sealer=$!
        cadence+=("$(bench "$clients")")
        wait $sealer 2>/dev/null || true
        $cli seal --every 1 >/dev/null 2>&1 & sealer=$!
        every+=("$(bench "$clients")")
        kill -TERM $sealer; wait $sealer 2>/dev/null || true
        $cli seal --every 0 >/dev/null 2>&1 & sealer=$!
        nonstop+=("$(bench "$clients")")
        kill -TERM $sealer; wait $sealer 2>/dev/null || true
        (while true; do $cli seal >/dev/null 2>&1; done) & sealer=$!
        (while true; do "${psql[@]}" -c "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"; sleep 0.05; done) >"$work/waits.$clients" & sampler=$!
        with+=("$(bench "$clients")")
        kill $sealer $sampler; wait $sealer $sampler 2>/dev/null || true
    done
    mw=$(median "${without[@]}"); mwith=$(median "${with[@]}"); mc=$(median "${cadence[@]}"); me=$(median "${every[@]}"); mn=$(median "${nonstop[@]}")
    waits=$(sort -n "$work/waits.$clients" | tail -n 1)
    echo "single-row audited INSERTs, $clients client(s): tps without a sealer ${without[*]} (median $mw); sealing once per run ${cadence[*]} (median $mc, ratio $(awk "BEGIN {printf \"%.3f\", $mc / $mw}")); \`seal --every 1\` running ${every[*]} (median $me, ratio $(awk "BEGIN {printf \"%.3f\", $me / $mw}")); \`seal --every 0\` (back-to-back on one connection) ${nonstop[*]} (median $mn, ratio $(awk "BEGIN {printf \"%.3f\", $mn / $mw}")); a new \`pg-audit seal\` process back-to-back ${with[*]} (median $mwith); ratio $(awk "BEGIN {printf \"%.3f\", $mwith / $mw}"); most backends waiting on a lock at once while sealing: ${waits:-0} ($(wc -l <"$work/waits.$clients") samples)"
done
sealed=$("${psql[@]}" -c "SELECT count(*), coalesce(sum(row_count), 0) FROM audit.auditlog_seals")
echo "seals made: $sealed (seals, rows)"
