#!/usr/bin/env bash
# Instruction counts of audited writes, deterministic on a noisy machine.
#
#   pg-audit-bench/callgrind.sh            # needs valgrind and the PostgreSQL server binaries
#   pg-audit-bench/callgrind.sh --wal      # capture from the write-ahead log against triggers
#
# Runs a single-user PostgreSQL backend under `valgrind --tool=callgrind` and reports the
# instructions each write costs: per statement for single-row writes sent one by one (as
# pgbench -M simple sends them), per row for bulk statements. Every figure is the difference
# between two runs of different lengths, so start-up cancels out. Wall-clock benchmarks on
# shared 2-core machines drift by ±30% from run to run; these counts repeat to within 0.1%.
set -euo pipefail
cd "$(dirname "$0")/.."
wal=false
[ "${1:-}" = --wal ] && wal=true

bindir=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || true)}
[ -x "$bindir/initdb" ] || bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
work=$(mktemp -d /tmp/pg-audit-callgrind.XXXXXX)
chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown postgres "$work"
trap '"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat >>"$work/data/postgresql.conf" <<EOF
fsync = off
autovacuum = off
jit = off
listen_addresses = ''
unix_socket_directories = '$work'
EOF
# Every variant of a --wal run pays for wal_level = logical, the unaudited table included.
if $wal; then echo "wal_level = logical" >>"$work/data/postgresql.conf"; fi

cargo build -q -p pg-audit-cli
cli=target/debug/pg-audit
{
    "$cli" sql table
    cat <<'EOF'
CREATE TABLE src (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, price numeric(12,2) NOT NULL,
                  quantity integer NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
                  updated_at timestamptz NOT NULL DEFAULT now(), description text NOT NULL);
INSERT INTO src (id, name, email, price, quantity, description)
SELECT g, 'name ' || g, 'user' || g || '@example.com', (g % 10000) / 100.0, g % 97,
       repeat(md5(g::text), 7)::varchar(200) FROM generate_series(1, 100000) AS g;
CREATE TABLE floor_log (op text);
CREATE FUNCTION floor_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO floor_log VALUES (TG_OP); RETURN NULL; END $$;
EOF
    for t in plain floor auto row statement tracked untracked_plain wal wal_alone; do
        echo "CREATE TABLE t_$t (LIKE src INCLUDING ALL); INSERT INTO t_$t SELECT * FROM src;"
    done
    echo "CREATE TRIGGER floor AFTER INSERT OR UPDATE OR DELETE ON t_floor FOR EACH ROW EXECUTE FUNCTION floor_trigger();"
    "$cli" sql trigger --table t_auto --primary-key id
    "$cli" sql trigger --table t_row --primary-key id --level row
    "$cli" sql trigger --table t_statement --primary-key id --level statement
    "$cli" sql trigger --table t_tracked --primary-key id --track-only name,email
    if $wal; then
        "$cli" sql trigger --table t_wal --primary-key id --capture wal
        "$cli" sql trigger --table t_wal_alone --primary-key id --capture wal
    fi
} >"$work/setup.sql"
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null
"$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$work" -U postgres -d postgres -f "$work/setup.sql" >/dev/null 2>"$work/setup.err" ||
    { cat "$work/setup.err" >&2; exit 1; }
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -w stop >/dev/null

count() { # stdin: SQL; prints instructions
    "${as_pg[@]}" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$bindir/postgres" --single -j -D "$work/data" postgres 2>&1 >/dev/null | tee "$work/cg.log" |
        grep -o 'Collected : [0-9]*' | awk '{print $3}'
    if grep -q ERROR "$work/cg.log"; then grep ERROR "$work/cg.log" | head -3 >&2; exit 1; fi
}
context="SET pg_audit.context = '{\"user_id\": \"u1\", \"change_reason\": \"benchmark\"}';"
statement() { # op table id
    case $1 in
        insert) echo "INSERT INTO $2 (id, name, email, price, quantity, description) VALUES ($((200000 + $3)), 'n', 'e@x', 1.5, 3, repeat('d', 200));" ;;
        update) echo "UPDATE $2 SET price = price + 1, updated_at = now() WHERE id = $3;" ;;
        delete) echo "DELETE FROM $2 WHERE id = $3;" ;;
    esac
}
per_statement() { # op table -> instructions per single-row statement
    local a b
    a=$({ echo "$context"; echo; for i in $(seq 1 200); do statement "$1" "$2" "$i"; echo; done; } | count)
    b=$({ echo "$context"; echo; for i in $(seq 201 800); do statement "$1" "$2" "$i"; echo; done; } | count)
    echo $(((b - a) / 400))
}
per_row() { # op table -> instructions per row of one bulk statement
    local n a b
    bulk() {
        echo "TRUNCATE $2; INSERT INTO $2 SELECT * FROM src WHERE id <= 20000;"; echo; echo "$context"; echo
        case $1 in
            insert) echo "INSERT INTO $2 SELECT id + 100000, name, email, price, quantity, created_at, updated_at, description FROM src WHERE id <= $3;" ;;
            update) echo "UPDATE $2 SET price = price + 1 WHERE id <= $3;" ;;
            delete) echo "DELETE FROM $2 WHERE id <= $3;" ;;
        esac
        echo
    }
    a=$(bulk "$1" "$2" 4000 | count)
    b=$(bulk "$1" "$2" 12000 | count)
    echo $(((b - a) / 8000))
}

if $wal; then
    # What a writing transaction pays with capture from the WAL: REPLICA IDENTITY FULL's old
    # row in the WAL, and the context message the helpers emit in each transaction (here in
    # each statement's transaction, as single-row writes in autocommit would).
    message="SELECT pg_catalog.pg_logical_emit_message(true, 'pg_audit', '{\"context\": {\"user_id\": \"u1\", \"change_reason\": \"benchmark\"}, \"db_user\": \"postgres\", \"tx_started_at\": \"2026-11-30T16:13:03.604790+00:00\"}');"
    with_message() { # op table id
        echo "BEGIN; $message $(statement "$1" "$2" "$3") COMMIT;"
    }
    per_statement_message() { # op table
        local a b
        a=$({ echo "$context"; echo; for i in $(seq 1 200); do with_message "$1" "$2" "$i"; echo; done; } | count)
        b=$({ echo "$context"; echo; for i in $(seq 201 800); do with_message "$1" "$2" "$i"; echo; done; } | count)
        echo $(((b - a) / 400))
    }
    printf '%-32s %10s %10s %14s %10s\n' "instructions (wal_level=logical)" plain pg-audit "wal + message" "wal alone"
    for op in insert update delete; do
        printf '%-32s %10s %10s %14s %10s\n' "single-row $op, per stmt" "$(per_statement $op t_plain)" \
            "$(per_statement $op t_auto)" "$(per_statement_message $op t_wal)" "$(per_statement $op t_wal_alone)"
    done
    for op in update delete; do
        printf '%-32s %10s %10s %14s %10s\n' "bulk $op, per row" "$(per_row $op t_plain)" "$(per_row $op t_auto)" "" "$(per_row $op t_wal_alone)"
    done
    exit 0
fi

printf '%-28s %10s %10s %10s %10s %10s\n' "instructions" plain floor pg-audit row statement
for op in insert update delete; do
    printf '%-28s' "single-row $op, per stmt"
    for t in plain floor auto row statement; do printf ' %10s' "$(per_statement $op t_$t)"; done
    echo
done
# Both tables untouched so far, so both start in the same state.
printf '%-28s %10s %10s %10s\n' "untracked update, per stmt" "$(per_statement update t_untracked_plain)" "" "$(per_statement update t_tracked)"
for op in insert update delete; do
    printf '%-28s' "bulk $op, per row"
    for t in plain floor auto row statement; do printf ' %10s' "$(per_row $op t_$t)"; done
    echo
done
