//! Masked columns: what the log stores of a column configured `mask` is a keyed digest of its
//! value (HMAC-SHA-256 of the value's JSON text, as `"hmac-sha256:<hex>"`), so an entry shows
//! that the value changed and equal values compare equal, but the value can be neither read
//! nor guessed from the log without the key.
//!
//! The key is made at the log's install from the server's strong random source and kept in
//! `<log>_mask_key`, which only the log's owner can read (the triggers run as the owner; the
//! application's roles cannot read it, nor run `<log>_masked`). It is stored as the HMAC's two
//! padded keys (`K ⊕ ipad`, `K ⊕ opad`), so the digest is two built-in `sha256` calls.
//! Triggers, baselines and capture from the write-ahead log all mask through `<log>_masked`.

use crate::ident::text_literal;
use crate::sql::create_function;
use crate::sql::names::LogNames;

/// The prefix of a masked value's digest in the log.
pub const MASKED_PREFIX: &str = "hmac-sha256:";

/// The key table and `<log>_masked(values jsonb, columns text[])`, part of the log's DDL.
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let key = names.mask_key_table();
    let masked = names.function("masked");
    let make_key = crate::ident::dollar_quote(&format!(
        "
DECLARE
    k bytea;
    i integer;
    v_inner bytea;
    v_outer bytea;
BEGIN
    IF NOT EXISTS (SELECT FROM {key}) THEN
        -- 64 bytes (SHA-256's block) from the server's strong random source.
        k := pg_catalog.uuid_send(pg_catalog.gen_random_uuid()) OPERATOR(pg_catalog.||) pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
             OPERATOR(pg_catalog.||) pg_catalog.uuid_send(pg_catalog.gen_random_uuid()) OPERATOR(pg_catalog.||) pg_catalog.uuid_send(pg_catalog.gen_random_uuid());
        v_inner := k;
        v_outer := k;
        FOR i IN 0..63 LOOP
            v_inner := pg_catalog.set_byte(v_inner, i, pg_catalog.get_byte(k, i) OPERATOR(pg_catalog.#) 54);
            v_outer := pg_catalog.set_byte(v_outer, i, pg_catalog.get_byte(k, i) OPERATOR(pg_catalog.#) 92);
        END LOOP;
        INSERT INTO {key} (inner_pad, outer_pad) VALUES (v_inner, v_outer);
    END IF;
END
"
    ));
    let body = format!(
        "
DECLARE
    v_inner bytea;
    v_outer bytea;
    v_out jsonb := p_values;
    c text;
BEGIN
    IF p_values IS NULL OR p_columns IS NULL THEN
        RETURN p_values;
    END IF;
    SELECT k.inner_pad, k.outer_pad INTO v_inner, v_outer FROM {key} AS k;
    IF v_inner IS NULL THEN
        RAISE EXCEPTION 'pg-audit: the masking key of the audit log is missing ({key_text} is empty)'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Install the log again (pg-audit sql table, or the migrations): it makes a key when there is none.';
    END IF;
    FOREACH c IN ARRAY p_columns LOOP
        IF v_out OPERATOR(pg_catalog.?) c THEN
            v_out := v_out OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(c, {prefix} OPERATOR(pg_catalog.||) pg_catalog.encode(
                pg_catalog.sha256(v_outer OPERATOR(pg_catalog.||) pg_catalog.sha256(v_inner OPERATOR(pg_catalog.||)
                    pg_catalog.convert_to((p_values OPERATOR(pg_catalog.->) c)::text, 'UTF8'))), 'hex'));
        END IF;
    END LOOP;
    RETURN v_out;
END
",
        key_text = crate::ident::in_template(&key.to_string()),
        prefix = text_literal(MASKED_PREFIX),
    );
    format!(
        "CREATE TABLE IF NOT EXISTS {key} (
    inner_pad bytea NOT NULL,
    outer_pad bytea NOT NULL
);
COMMENT ON TABLE {key} IS {comment};
REVOKE ALL ON TABLE {key} FROM PUBLIC;
DO {make_key};
{function}
REVOKE ALL ON FUNCTION {masked}(jsonb, text[]) FROM PUBLIC;
",
        comment = text_literal(
            "pg-audit: the key of masked columns' digests (HMAC-SHA-256, as its padded inner and outer keys); readable by the log's owner only"
        ),
        function = create_function(
            &format!("{masked}(p_values jsonb, p_columns text[])"),
            "jsonb",
            "plpgsql",
            false,
            &body
        ),
    )
}
