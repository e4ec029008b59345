"""An independent verifier of pg-audit's seals, written from docs/digest.md alone.

    python3 third_party_verify.py SEALS.jsonl FILE.parquet... [--erased ERASED.jsonl]

Reads the seals `pg-audit seal --export` wrote and the archived Parquet files (through DuckDB),
recomputes every row's digest and every seal up to the files' highest id, and prints `ok` and
exits 0 when each such seal covers exactly its rows unchanged and every seal follows the one
before, or prints what differs and exits 1. `--erased` names a file of the
erased values' recorded digests that apply (one JSON object per line: entry_id, column_name,
key, digest in hex). It uses Python's standard library and DuckDB only: nothing of pg-audit.
"""

import hashlib
import json
import sys

import duckdb

SCALARS = {
    "id": "int", "changed_at": "int", "tx_started_at": "int", "txid": "int",
    "operation": "str", "schema_name": "str", "table_name": "str", "record_key": "int",
    "db_user": "str", "old_record_key": "int",
}
JSON_COLUMNS = ["record_pk", "old_values", "new_values", "context", "old_record_pk"]
MARKER = '"[redacted]"'


def H(b):
    return hashlib.sha256(b).digest()


def escape_json(s):
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
        elif ord(c) < 0x20:
            out.append("\\u%04x" % ord(c))
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def scalar_text(row):
    members = []
    for name, kind in SCALARS.items():
        v = row[name]
        if v is None:
            continue
        members.append((name, str(v) if kind == "int" else escape_json(v)))
    members.sort(key=lambda m: (len(m[0].encode()), m[0].encode()))
    return "{" + ", ".join('"%s": %s' % m for m in members) + "}"


WS = " \t\n\r"


def skip_ws(t, i):
    while i < len(t) and t[i] in WS:
        i += 1
    return i


def string_end(t, i):
    j = i + 1
    while j < len(t):
        if t[j] == "\\":
            j += 2
        elif t[j] == '"':
            return j + 1
        else:
            j += 1
    raise ValueError("unterminated string")


def value_end(t, i):
    if t[i] == '"':
        return string_end(t, i)
    if t[i] in "{[":
        depth, j = 0, i
        while j < len(t):
            if t[j] == '"':
                j = string_end(t, j)
                continue
            if t[j] in "{[":
                depth += 1
            elif t[j] in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        raise ValueError("unbalanced")
    j = i
    while j < len(t) and t[j] not in ",}] \t\n\r":
        j += 1
    return j


def members(t):
    """The top-level (key, value text) pairs of an object's text, or None when not an object."""
    i = skip_ws(t, 0)
    if i >= len(t) or t[i] != "{":
        return None
    out = []
    i = skip_ws(t, i + 1)
    if t[i] == "}":
        return out
    while True:
        k_end = string_end(t, i)
        key = json.loads(t[i:k_end])
        i = skip_ws(t, k_end)
        assert t[i] == ":"
        i = skip_ws(t, i + 1)
        v_end = value_end(t, i)
        out.append((key, t[i:v_end]))
        i = skip_ws(t, v_end)
        if t[i] == "}":
            return out
        i = skip_ws(t, i + 1)


def column_digest(row_id, name, text, erased):
    pairs = members(text)
    if pairs is None:
        return H(name.encode() + b"\x00" + text.encode())
    parts = []
    for key, value in pairs:
        recorded = erased.get((row_id, name, key)) if value == MARKER else None
        parts.append(recorded or H(key.encode() + b"\x00" + value.encode()))
    return H(name.encode() + b"\x02" + b"".join(parts))


def row_digest(row, erased):
    out = scalar_text(row).encode()
    for name in JSON_COLUMNS:
        if row[name] is not None:
            out += column_digest(row["id"], name, row[name], erased)
    return H(out)


def main(argv):
    erased = {}
    if "--erased" in argv:
        at = argv.index("--erased")
        for line in open(argv[at + 1], encoding="utf-8"):
            if line.strip():
                e = json.loads(line)
                erased[(e["entry_id"], e["column_name"], e["key"])] = bytes.fromhex(e["digest"])
        argv = argv[:at] + argv[at + 2:]
    seals = [json.loads(line) for line in open(argv[0], encoding="utf-8") if line.strip()]
    files = argv[1:]
    columns = ", ".join(
        ("epoch_us(%s) AS %s" % (c, c)) if c in ("changed_at", "tx_started_at") else c
        for c in list(SCALARS) + JSON_COLUMNS
    )
    con = duckdb.connect()
    rows = con.execute(
        "SELECT %s FROM read_parquet(?) ORDER BY id" % columns, [files]
    ).fetchall()
    names = list(SCALARS) + JSON_COLUMNS
    digests = [(r[0], row_digest(dict(zip(names, r)), erased)) for r in rows]
    problems = []
    prev = None
    top = max((i for i, _ in digests), default=0)
    unchecked = 0
    for seal in sorted(seals, key=lambda s: s["seal_id"]):
        first, last = seal["first_id"], seal["last_id"]
        if prev is not None and (first != prev["last_id"] + 1 or seal["prev_hash"] != prev["hash"]):
            problems.append("seal %d does not follow seal %d" % (seal["seal_id"], prev["seal_id"]))
        if last > top:
            # Rows (some) still in the database, not in these files: the chain is checked only.
            unchecked += 1
            prev = seal
            continue
        mine = sorted(d for d in digests if first <= d[0] <= last)
        packed = b"".join(i.to_bytes(8, "big", signed=True) + d[:8] for i, d in mine)
        chained = bytes.fromhex(seal["prev_hash"]) if seal["prev_hash"] else b""
        h = H(chained + first.to_bytes(8, "big", signed=True) + last.to_bytes(8, "big", signed=True)
              + b"".join(d for _, d in mine))
        if len(mine) != seal["row_count"] or packed.hex() != seal["rows"] or h.hex() != seal["hash"]:
            problems.append("seal %d (ids %d..=%d) does not match the rows" % (seal["seal_id"], first, last))
        prev = seal
    for p in problems:
        print(p)
    if not problems:
        print("ok: %d seal(s) over %d row(s); %d seal(s) of rows not in these files, chained only"
              % (len(seals) - unchecked, len(digests), unchecked))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
