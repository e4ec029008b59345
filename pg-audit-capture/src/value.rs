//! Column values from the replication stream as the JSON of `to_jsonb`.
//!
//! `pgoutput` (protocol version 1) sends each column as its type's text output, and the
//! relation's column types as OIDs. The triggers log a row as `to_jsonb(NEW)`; for the log
//! written from the WAL to hold the same entries, each value must become the JSON
//! `to_jsonb` gives for it. PostgreSQL's rules (`jsonb_categorize_type` and
//! `datum_to_jsonb` in `src/backend/utils/adt/jsonb.c`) are, after looking through domains:
//! booleans and numbers become JSON booleans and numbers (`NaN` and the infinities strings),
//! `date` and the timestamps ISO 8601 strings in XSD form, `json` and `jsonb` themselves,
//! arrays nested JSON arrays, composites objects, types with a cast to `json` that cast's
//! result, and every other type the string of its text output.
//!
//! [`kinds`] reads from the catalog how each column type's text becomes JSON ([`Kind`]);
//! [`Kind::json`] converts a value here, or declines, and [`via_server`] then asks the
//! server (composites, types cast to JSON, text not in the expected form).
//!
//! The conversion is exact for the text the server's output functions write under the
//! default output settings (`DateStyle` ISO). The text depends on the sending session's
//! settings, as `to_jsonb` in a trigger depends on the writing session's: a `timestamptz`
//! carries the offset of the session's `TimeZone`, `extra_float_digits` below 1 rounds
//! floats, and `IntervalStyle`, `bytea_output` and `lc_monetary` shape the strings of
//! their types. Entries from the WAL equal the triggers' when those settings agree.

use std::collections::HashMap;

use tokio_postgres::Client;

/// How the text output of a type becomes the JSON `to_jsonb` gives for its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `bool` (`t`, `f`): `true`, `false`.
    Bool,
    /// `int2`, `int4`, `int8`, `float4`, `float8`, `numeric`: a JSON number written as
    /// `numeric` prints it (no exponent), `NaN` and the infinities as strings.
    Number,
    /// `json`, `jsonb`: the value itself.
    Json,
    /// `date`: the ISO form as a string (the same in XSD form), or `infinity`.
    Date,
    /// `timestamp`: a string, `T` between date and time.
    Timestamp,
    /// `timestamptz`: a string, `T` between date and time, the offset as `+HH:MM[:SS]`.
    TimestampTz,
    /// Every other type: the text as a JSON string.
    Text,
    /// An array (`array_out`'s text): a JSON array, nested by dimension, bounds dropped.
    Array {
        /// How each element becomes JSON.
        element: Box<Kind>,
        /// The element type's `typdelim` (`;` for `box`, `,` otherwise).
        delimiter: u8,
    },
    /// Only the server converts it exactly: composite types, types with a cast to `json`,
    /// arrays whose text is not `array_out`'s.
    Server,
}

impl Kind {
    /// The JSON text of `to_jsonb` for the value whose text output is `text`, or `None` when
    /// the value must go to [`via_server`].
    pub(crate) fn json(&self, text: &str) -> Option<String> {
        let mut out = String::with_capacity(text.len() + 2);
        self.write_json(text, &mut out).then_some(out)
    }

    /// Appends the JSON of [`Kind::json`] to `out` (a row's object is built in one buffer);
    /// `false`, with `out` as it was, when the value must go to [`via_server`].
    #[must_use]
    pub(crate) fn write_json(&self, text: &str, out: &mut String) -> bool {
        let len = out.len();
        if self.write(text, out).is_some() {
            true
        } else {
            out.truncate(len);
            false
        }
    }

    /// Whether some values of this kind go to the server whatever their text.
    fn needs_server(&self) -> bool {
        match self {
            Kind::Server => true,
            Kind::Array { element, .. } => element.needs_server(),
            _ => false,
        }
    }

    /// Appends the JSON, or `None` (leaving `out` partly written) to decline.
    fn write(&self, text: &str, out: &mut String) -> Option<()> {
        match self {
            Kind::Bool => out.push_str(match text {
                "t" => "true",
                "f" => "false",
                _ => return None,
            }),
            Kind::Number => write_number(text, out)?,
            Kind::Json => out.push_str(text),
            Kind::Date => write_date(text, out)?,
            Kind::Timestamp => write_timestamp(text, false, out)?,
            Kind::TimestampTz => write_timestamp(text, true, out)?,
            Kind::Text => write_string(text, out),
            Kind::Array { element, delimiter } => {
                if element.needs_server() {
                    return None;
                }
                ArrayText {
                    text,
                    pos: 0,
                    delimiter: *delimiter,
                    element,
                    unescaped: String::new(),
                }
                .write(out)?;
            }
            Kind::Server => return None,
        }
        Some(())
    }
}

/// Appends `text` as a JSON string, escaped as PostgreSQL's `escape_json` does (so the text
/// equals the server's, not only the value).
pub(crate) fn write_string(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(text.len() + 2);
    out.push('"');
    let mut plain = 0;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Every escaped byte is ASCII, so these are character boundaries.
        out.push_str(&text[plain..i]);
        plain = i + 1;
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

/// Whether `jsonb` might refuse JSON text that `json` accepted: it holds a `\u0000` escape
/// or a UTF-16 surrogate escape (a lone one is refused). A cheap test before the server's
/// exact one; an escaped backslash followed by `u0000` passes the server's.
pub(crate) fn jsonb_may_refuse(json: &str) -> bool {
    json.as_bytes().windows(6).any(|w| {
        w[0] == b'\\'
            && w[1] == b'u'
            && (w[2..] == *b"0000"
                || (matches!(w[2], b'd' | b'D')
                    && matches!(w[3].to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f')))
    })
}

/// The largest exponent written out in full; beyond it (no float or `numeric` output has
/// one), the server decides.
const MAX_EXPONENT: i64 = 1000;

/// A number's output as `to_jsonb` writes it. The server reads the output back with
/// `numeric_in` unless it holds an `n` or `N` (`NaN`, `Infinity`), which stay strings; so a
/// float's exponent is written out (`1e+300` as 1 and 300 zeros, `1.5e-07` as `0.00000015`)
/// and `-0` is `0`.
fn write_number(text: &str, out: &mut String) -> Option<()> {
    let b = text.as_bytes();
    if b.iter().any(|&c| c == b'n' || c == b'N') {
        write_string(text, out);
        return Some(());
    }
    let digits = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let negative = b.first() == Some(&b'-');
    let int_start = usize::from(negative);
    let int_end = digits(int_start);
    let (frac_start, mut end) = (int_end + 1, int_end);
    if b.get(int_end) == Some(&b'.') {
        end = digits(frac_start);
        if end == frac_start {
            return None;
        }
    }
    let frac_end = end;
    let mut exponent: i64 = 0;
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let sign_len = usize::from(matches!(b.get(end + 1), Some(b'+' | b'-')));
        let exp_start = end + 1 + sign_len;
        end = digits(exp_start);
        if end == exp_start || end - exp_start > 6 {
            return None;
        }
        exponent = text[exp_start - sign_len..end].parse().ok()?;
        if exponent.abs() > MAX_EXPONENT {
            return None;
        }
    }
    if int_end == int_start || end != b.len() {
        return None;
    }
    let int = &b[int_start..int_end];
    let frac = if frac_end > int_end {
        &b[frac_start..frac_end]
    } else {
        &[]
    };
    let zero = int.iter().chain(frac).all(|&c| c == b'0');
    let leading_zero = int.len() > 1 && int[0] == b'0';
    if frac_end == end && !leading_zero && !(negative && zero) {
        // What every integer and `numeric` output is: already as the server prints it.
        out.push_str(text);
        return Some(());
    }
    // numeric_in: the digits, the point `exponent` places right, and as many decimals as
    // were written after the point less the exponent.
    let all = int.len() as i64 + frac.len() as i64;
    let digit = |k: i64| {
        if (0..all).contains(&k) {
            let k = k as usize;
            char::from(if k < int.len() {
                int[k]
            } else {
                frac[k - int.len()]
            })
        } else {
            '0'
        }
    };
    let point = int.len() as i64 + exponent;
    let scale = (frac.len() as i64 - exponent).max(0);
    if negative && !zero {
        out.push('-');
    }
    let first = (0..point).find(|&k| digit(k) != '0');
    match first {
        Some(first) => (first..point).for_each(|k| out.push(digit(k))),
        None => out.push('0'),
    }
    if scale > 0 {
        out.push('.');
        (point..point + scale).for_each(|k| out.push(digit(k)));
    }
    Some(())
}

/// The length of an ISO date's `YYYY-MM-DD` (four or more year digits) at the start of `b`.
fn date_len(b: &[u8]) -> Option<usize> {
    let year = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let rest = b.get(year..year + 6)?;
    let shape = year >= 4
        && rest[0] == b'-'
        && rest[3] == b'-'
        && [1, 2, 4, 5].iter().all(|&i| rest[i].is_ascii_digit());
    shape.then_some(year + 6)
}

/// Whether `b` at `at` holds two digits.
fn two_digits(b: &[u8], at: usize) -> bool {
    b.get(at..at + 2)
        .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
}

/// A date: `to_jsonb`'s XSD form of a date is its ISO form (`0044-03-15 BC` included).
fn write_date(text: &str, out: &mut String) -> Option<()> {
    if !matches!(text, "infinity" | "-infinity") {
        let len = date_len(text.as_bytes())?;
        if !matches!(&text[len..], "" | " BC") {
            return None;
        }
    }
    out.push('"');
    out.push_str(text);
    out.push('"');
    Some(())
}

/// A timestamp's ISO output `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]` in XSD form:
/// `T` for the space, and an offset of whole hours with its minutes (`+00:00`).
fn write_timestamp(text: &str, zone: bool, out: &mut String) -> Option<()> {
    if matches!(text, "infinity" | "-infinity") {
        out.push('"');
        out.push_str(text);
        out.push('"');
        return Some(());
    }
    let b = text.as_bytes();
    let date = date_len(b)?;
    let time = date + 1;
    let shape = b.get(date) == Some(&b' ')
        && two_digits(b, time)
        && b.get(time + 2) == Some(&b':')
        && two_digits(b, time + 3)
        && b.get(time + 5) == Some(&b':')
        && two_digits(b, time + 6);
    if !shape {
        return None;
    }
    let mut end = time + 8;
    if b.get(end) == Some(&b'.') {
        let digits = b[end + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        end += 1 + digits;
    }
    let mut whole_hours = false;
    if zone {
        if !matches!(b.get(end), Some(b'+' | b'-')) || !two_digits(b, end + 1) {
            return None;
        }
        end += 3;
        whole_hours = true;
        // Minutes, then seconds, each `:` and two digits.
        for _ in 0..2 {
            if b.get(end) == Some(&b':') && two_digits(b, end + 1) {
                end += 3;
                whole_hours = false;
            } else {
                break;
            }
        }
    }
    let era = &text[end..];
    if !matches!(era, "" | " BC") {
        return None;
    }
    out.push('"');
    out.push_str(&text[..date]);
    out.push('T');
    out.push_str(&text[time..end]);
    if whole_hours {
        out.push_str(":00");
    }
    out.push_str(era);
    out.push('"');
    Some(())
}

/// The most dimensions an array has (PostgreSQL's `MAXDIM`).
const MAX_DIMENSIONS: usize = 6;

/// A reader of `array_out`'s text: `{...}` nested by dimension, after `[lo:hi]...=` when a
/// lower bound is not 1; elements separated by the delimiter, unquoted or double-quoted with
/// `\` escaping, unquoted `NULL` for null.
struct ArrayText<'a> {
    text: &'a str,
    pos: usize,
    delimiter: u8,
    element: &'a Kind,
    /// Reused for quoted elements with escapes.
    unescaped: String,
}

impl ArrayText<'_> {
    fn write(mut self, out: &mut String) -> Option<()> {
        if self.text.starts_with('[') {
            // `to_jsonb` drops the bounds.
            self.pos = self.text.find('=')? + 1;
        }
        self.dimension(out, 1)?;
        (self.pos == self.text.len()).then_some(())
    }

    /// One `{...}`, its elements or its sub-arrays.
    fn dimension(&mut self, out: &mut String, depth: usize) -> Option<()> {
        let b = self.text.as_bytes();
        if depth > MAX_DIMENSIONS || b.get(self.pos) != Some(&b'{') {
            return None;
        }
        self.pos += 1;
        out.push('[');
        if b.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            out.push(']');
            return Some(());
        }
        loop {
            match b.get(self.pos)? {
                b'{' => self.dimension(out, depth + 1)?,
                b'"' => self.quoted(out)?,
                _ => self.unquoted(out)?,
            }
            let next = *b.get(self.pos)?;
            self.pos += 1;
            if next == self.delimiter {
                out.push(',');
            } else if next == b'}' {
                out.push(']');
                return Some(());
            } else {
                return None;
            }
        }
    }

    /// A `"..."` element (its quotes and backslashes escaped by `\`).
    fn quoted(&mut self, out: &mut String) -> Option<()> {
        let b = self.text.as_bytes();
        let start = self.pos + 1;
        let mut escaped = false;
        let mut end = start;
        loop {
            match *b.get(end)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    end += 2;
                }
                _ => end += 1,
            }
        }
        self.pos = end + 1;
        // Quotes and backslashes are ASCII: these are character boundaries.
        let raw = &self.text[start..end];
        if !escaped {
            return self.element.write(raw, out);
        }
        self.unescaped.clear();
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            self.unescaped
                .push(if c == '\\' { chars.next()? } else { c });
        }
        self.element.write(&self.unescaped, out)
    }

    /// An element without quotes, up to the delimiter or the end of its dimension (`array_out`
    /// quotes any element holding those, braces, quotes, backslashes or spaces, or that is
    /// empty or `NULL`).
    fn unquoted(&mut self, out: &mut String) -> Option<()> {
        let start = self.pos;
        let len = self.text.as_bytes()[start..]
            .iter()
            .position(|&c| c == self.delimiter || c == b'}')?;
        self.pos += len;
        // The delimiter and `}` are ASCII: these are character boundaries.
        let raw = &self.text[start..self.pos];
        if raw.is_empty() || raw.contains(['{', '"', '\\']) {
            return None;
        }
        if raw.eq_ignore_ascii_case("NULL") {
            out.push_str("null");
            return Some(());
        }
        self.element.write(raw, out)
    }
}

/// Each given type's [`Kind`], from one catalog query; a type the catalog does not hold is
/// missing from the map.
///
/// Types with any cast to `json` or `jsonb` go to the server: `to_jsonb` uses only a
/// function cast to `json` of a type not built in, which the server applies exactly.
pub(crate) async fn kinds(
    client: &Client,
    oids: &[u32],
) -> Result<HashMap<u32, Kind>, tokio_postgres::Error> {
    // The types reached from the given ones through domains' base types and arrays'
    // elements (any varlena type with an element type is an array to `to_jsonb`).
    let rows = client
        .query(
            "WITH RECURSIVE reached(oid) AS (
    SELECT o FROM pg_catalog.unnest($1::pg_catalog.oid[]) AS o
  UNION
    SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END
      FROM reached AS r
      JOIN pg_catalog.pg_type AS t ON t.oid = r.oid
     WHERE t.typtype = 'd' OR (t.typelem <> 0 AND t.typlen = -1)
)
SELECT t.oid, t.typtype, t.typbasetype, t.typelem, t.typlen, t.typdelim,
       t.typoutput = 'pg_catalog.array_out'::pg_catalog.regproc,
       EXISTS (SELECT FROM pg_catalog.pg_cast AS c
                WHERE c.castsource = t.oid
                  AND c.casttarget IN ('pg_catalog.json'::pg_catalog.regtype,
                                       'pg_catalog.jsonb'::pg_catalog.regtype))
  FROM reached AS r
  JOIN pg_catalog.pg_type AS t ON t.oid = r.oid",
            &[&oids],
        )
        .await?;
    let mut types = HashMap::with_capacity(rows.len());
    for row in &rows {
        let oid: u32 = row.get(0);
        types.insert(
            oid,
            TypeRow {
                typtype: row.get::<_, i8>(1) as u8,
                base: row.get(2),
                element: row.get(3),
                len: row.get(4),
                delimiter: row.get::<_, i8>(5) as u8,
                array_out: row.get(6),
                cast_to_json: row.get(7),
            },
        );
    }
    Ok(oids
        .iter()
        .filter(|oid| types.contains_key(oid))
        .map(|&oid| (oid, kind_of(&types, oid, 0)))
        .collect())
}

/// What [`kinds`] reads of a type.
struct TypeRow {
    typtype: u8,
    base: u32,
    element: u32,
    len: i16,
    delimiter: u8,
    array_out: bool,
    cast_to_json: bool,
}

/// The kind of `oid` as `jsonb_categorize_type` decides it.
fn kind_of(types: &HashMap<u32, TypeRow>, oid: u32, depth: usize) -> Kind {
    // Domains over domains and arrays of domains over arrays: a few levels in practice.
    let Some(t) = types.get(&oid).filter(|_| depth < 32) else {
        return Kind::Server;
    };
    if t.typtype == b'd' {
        return kind_of(types, t.base, depth + 1);
    }
    match oid {
        16 => return Kind::Bool,
        20 | 21 | 23 | 700 | 701 | 1700 => return Kind::Number,
        114 | 3802 => return Kind::Json,
        1082 => return Kind::Date,
        1114 => return Kind::Timestamp,
        1184 => return Kind::TimestampTz,
        _ => {}
    }
    if t.element != 0 && t.len == -1 {
        // `int2vector` and `oidvector` are arrays to `to_jsonb` but print as `1 2`.
        return match types.get(&t.element) {
            Some(element) if t.array_out => Kind::Array {
                element: Box::new(kind_of(types, t.element, depth + 1)),
                delimiter: element.delimiter,
            },
            _ => Kind::Server,
        };
    }
    // Composites and pseudo-types (`record`), and types `to_jsonb` converts through their
    // cast to `json`.
    if matches!(t.typtype, b'c' | b'p') || t.cast_to_json {
        return Kind::Server;
    }
    Kind::Text
}

/// The JSON text of `to_jsonb` for values of one type, given their text output, in `texts`'
/// order: the server reads each with the type's input function and converts it.
///
/// The session's settings read the text as the sender's wrote it (`DateStyle`,
/// `IntervalStyle`) and shape what the server writes (a composite's `timestamptz` fields
/// take the offset of its `TimeZone`). A type the catalog does not hold is an error.
pub(crate) async fn via_server(
    client: &Client,
    type_oid: u32,
    texts: &[&str],
) -> Result<Vec<String>, tokio_postgres::Error> {
    // With typmod -1 the name has none: `bpchar`, not `character` (which is `character(1)`
    // and would cut the value), and is quoted and qualified as it needs.
    let name: String = client
        .query_one("SELECT pg_catalog.format_type($1, -1)", &[&type_oid])
        .await?
        .get(0);
    let rows = client
        .query(
            &format!(
                "SELECT pg_catalog.to_jsonb(CAST(u.v AS {name}))::text
  FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS u(v, n)
 ORDER BY u.n"
            ),
            &[&texts],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(element: Kind, delimiter: u8) -> Kind {
        Kind::Array {
            element: Box::new(element),
            delimiter,
        }
    }

    #[test]
    fn strings_are_escaped_as_the_server_escapes_them() {
        let json = |text| Kind::Text.json(text).unwrap();
        assert_eq!(json(""), r#""""#);
        assert_eq!(json("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(
            json("\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}"),
            "\"\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f}\""
        );
        assert_eq!(json("é😀\u{2028}"), "\"é😀\u{2028}\"");
    }

    #[test]
    fn numbers_are_written_as_numeric_prints_them() {
        let json = |text| Kind::Number.json(text);
        assert_eq!(json("42").unwrap(), "42");
        assert_eq!(json("-1.50").unwrap(), "-1.50");
        assert_eq!(json("0.1").unwrap(), "0.1");
        assert_eq!(json("-0").unwrap(), "0");
        assert_eq!(json("1e+300").unwrap(), format!("1{}", "0".repeat(300)));
        assert_eq!(json("1.5e-07").unwrap(), "0.00000015");
        assert_eq!(json("-1.5e-07").unwrap(), "-0.00000015");
        assert_eq!(
            json("1.2345678901234567e+20").unwrap(),
            "123456789012345670000"
        );
        assert_eq!(json("1.25e+1").unwrap(), "12.5");
        assert_eq!(json("5e-324").unwrap(), format!("0.{}5", "0".repeat(323)));
        assert_eq!(json("NaN").unwrap(), r#""NaN""#);
        assert_eq!(json("-Infinity").unwrap(), r#""-Infinity""#);
        for bad in ["", "-", "1.", ".5", "1e", "1e+", "1x", "+1", "1e9999999"] {
            assert_eq!(json(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dates_and_timestamps_take_the_xsd_form() {
        let json = |kind: Kind, text| kind.json(text);
        assert_eq!(
            json(Kind::Date, "2026-11-30").as_deref(),
            Some(r#""2026-11-30""#)
        );
        assert_eq!(
            json(Kind::Date, "0044-03-15 BC").as_deref(),
            Some(r#""0044-03-15 BC""#)
        );
        assert_eq!(
            json(Kind::Date, "-infinity").as_deref(),
            Some(r#""-infinity""#)
        );
        assert_eq!(
            json(Kind::Timestamp, "2026-11-30 15:47:39.123456").as_deref(),
            Some(r#""2026-11-30T15:47:39.123456""#)
        );
        assert_eq!(
            json(Kind::Timestamp, "12026-11-30 15:47:39 BC").as_deref(),
            Some(r#""12026-11-30T15:47:39 BC""#)
        );
        assert_eq!(
            json(Kind::TimestampTz, "2026-11-30 15:47:39+00").as_deref(),
            Some(r#""2026-11-30T15:47:39+00:00""#)
        );
        assert_eq!(
            json(Kind::TimestampTz, "2026-11-30 15:47:39.5-03:30").as_deref(),
            Some(r#""2026-11-30T15:47:39.5-03:30""#)
        );
        assert_eq!(
            json(Kind::TimestampTz, "0044-03-15 12:00:00-04:56:02 BC").as_deref(),
            Some(r#""0044-03-15T12:00:00-04:56:02 BC""#)
        );
        for (kind, bad) in [
            (Kind::Date, "11/30/2026"),
            (Kind::Date, "26-11-30"),
            (Kind::Date, "2026-11-30 AD"),
            (Kind::Timestamp, "2026-11-30T15:47:39"),
            (Kind::Timestamp, "2026-11-30 15:47:39+00"),
            (Kind::Timestamp, "2026-11-30 15:47:39."),
            (Kind::Timestamp, "Mon Nov 30 15:47:39 2026"),
            (Kind::TimestampTz, "2026-11-30 15:47:39"),
            (Kind::TimestampTz, "2026-11-30 15:47:39+5"),
            (Kind::TimestampTz, "2026-11-30 15:47:39 PST"),
        ] {
            assert_eq!(json(kind, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn arrays_nest_and_drop_their_bounds() {
        let ints = array(Kind::Number, b',');
        let json = |kind: &Kind, text| kind.json(text);
        assert_eq!(json(&ints, "{}").as_deref(), Some("[]"));
        assert_eq!(json(&ints, "{1,NULL,-3}").as_deref(), Some("[1,null,-3]"));
        assert_eq!(
            json(&ints, "{{1,2},{3,4}}").as_deref(),
            Some("[[1,2],[3,4]]")
        );
        assert_eq!(json(&ints, "[0:1]={5,6}").as_deref(), Some("[5,6]"));
        assert_eq!(
            json(&ints, "[2:3][-1:0]={{1,2},{3,4}}").as_deref(),
            Some("[[1,2],[3,4]]")
        );
        assert_eq!(
            json(&array(Kind::Number, b','), "{NaN,1e+300}").unwrap(),
            format!("[\"NaN\",1{}]", "0".repeat(300))
        );
        let texts = array(Kind::Text, b',');
        assert_eq!(
            json(
                &texts,
                r#"{"a\"b","c\\d","x,y","{}",NULL,"NULL","",plain,"é 😀"}"#
            )
            .as_deref(),
            Some(r#"["a\"b","c\\d","x,y","{}",null,"NULL","","plain","é 😀"]"#)
        );
        let boxes = array(Kind::Text, b';');
        assert_eq!(
            json(&boxes, "{(1,1),(0,0);(3,3),(2,2)}").as_deref(),
            Some(r#"["(1,1),(0,0)","(3,3),(2,2)"]"#)
        );
        let jsons = array(Kind::Json, b',');
        assert_eq!(
            json(&jsons, r#"{"{\"a\": [1, 2]}",null,"\"s\""}"#).as_deref(),
            Some(r#"[{"a": [1, 2]},null,"s"]"#)
        );
        // An array of a domain over an array: its elements are arrays' text.
        let nested = array(array(Kind::Number, b','), b',');
        assert_eq!(
            json(&nested, r#"{"{1,2}",NULL,"{}"}"#).as_deref(),
            Some("[[1,2],null,[]]")
        );
        let stamps = array(Kind::TimestampTz, b',');
        assert_eq!(
            json(&stamps, r#"{"2026-11-30 15:47:39+05:30",infinity}"#).as_deref(),
            Some(r#"["2026-11-30T15:47:39+05:30","infinity"]"#)
        );
    }

    #[test]
    fn arrays_not_in_array_outs_form_go_to_the_server() {
        let ints = array(Kind::Number, b',');
        for bad in [
            "",
            "{",
            "{1,2",
            "{1,2}x",
            "1,2",
            "{1,,2}",
            "{,}",
            r#"{"abc}"#,
            r#"{"a"b}"#,
            r#"{a"b}"#,
            "{{{{{{{1}}}}}}}",
            "[1:2]{1,2}",
            "{1 2}",
            "{x}",
        ] {
            assert_eq!(ints.json(bad), None, "{bad:?}");
        }
        assert_eq!(array(Kind::Server, b',').json("{1}"), None);
        assert_eq!(array(Kind::Bool, b',').json("{t,maybe}"), None);
        let mut out = String::from("{\"a\":");
        assert!(!array(Kind::Number, b',').write_json("{1,x}", &mut out));
        assert_eq!(out, "{\"a\":");
    }

    /// One column of the differential test: its name, type, and test values (SQL
    /// expressions).
    struct Column {
        name: &'static str,
        sql_type: &'static str,
        values: &'static [&'static str],
    }

    const fn column(
        name: &'static str,
        sql_type: &'static str,
        values: &'static [&'static str],
    ) -> Column {
        Column {
            name,
            sql_type,
            values,
        }
    }

    /// Every kind of column, with tricky values; row `i` takes each column's value `i`, or
    /// NULL when it has fewer.
    const COLUMNS: &[Column] = &[
        column("b", "bool", &["true", "false"]),
        column("i2", "int2", &["-32768", "0", "32767"]),
        column("i4", "int4", &["-2147483648", "7"]),
        column(
            "i8",
            "int8",
            &["-9223372036854775808", "9223372036854775807"],
        ),
        column(
            "f4",
            "float4",
            &[
                "0.1",
                "'NaN'",
                "'-Infinity'",
                "3.4028235e38",
                "1e-45",
                "'-0'",
                "1.5",
            ],
        ),
        column(
            "f8",
            "float8",
            &[
                "0.1",
                "1e300",
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "'-0'",
                "4.9406564584124654e-324",
                "1.7976931348623157e308",
                "123456789012345678",
                "-1.5e-7",
                "100",
            ],
        ),
        column(
            "n",
            "numeric",
            &[
                "'123456789012345678901234567890.123456789012345678901234567890'",
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "'0.000'",
                "'-1.50'",
                "'1e-20'",
                "'-0'",
            ],
        ),
        column("n_scaled", "numeric(10, 3)", &["1.5", "-0.0001"]),
        column(
            "t",
            "text",
            &[
                r#"E'quote " backslash \\ newline \n tab \t cr \r bs \b ff \f ctl \x01 \x1f del \x7f'"#,
                "'é ü 中文 😀 \u{2028}'",
                "''",
                "'NULL'",
                r#"'{"a": 1}'"#,
                "'  spaced  '",
            ],
        ),
        column("vc", "varchar(20)", &["'a\"b'", "''"]),
        column("ch", "char(5)", &["'ab'", "'abcde'", "''"]),
        column("qchar", "\"char\"", &["'x'", "'\"'"]),
        column("nm", "name", &["'a name'"]),
        column("id", "uuid", &["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"]),
        column("by", "bytea", &[r"'\x00ff5c22'", "''"]),
        column(
            "d",
            "date",
            &[
                "'2026-11-30'",
                "'infinity'",
                "'-infinity'",
                "'0044-03-15 BC'",
                "'10000-01-01'",
                "'0001-01-01'",
                "'4713-01-01 BC'",
            ],
        ),
        column(
            "ts",
            "timestamp",
            &[
                "'2026-11-30 15:47:39.123456'",
                "'infinity'",
                "'-infinity'",
                "'0044-03-15 12:00:00.5 BC'",
                "'294276-12-31 23:59:59.999999'",
                "'2026-01-01 00:00:00'",
            ],
        ),
        column("ts0", "timestamp(0)", &["'2026-11-30 15:47:39.7'"]),
        column(
            "tz",
            "timestamptz",
            &[
                "'2026-11-30 15:47:39.123456+00'",
                "'infinity'",
                "'-infinity'",
                "'0044-03-15 12:00:00 BC'",
                "'1900-01-01 00:00:00+00'",
                "'1850-06-01 12:00:00+00'",
                "'2026-06-30 23:59:59.999999-07'",
            ],
        ),
        column("tm", "time", &["'15:47:39.123'", "'24:00'"]),
        column(
            "ttz",
            "timetz",
            &["'15:47:39+05:30'", "'00:00:00-00:00:10'"],
        ),
        column(
            "iv",
            "interval",
            &["'1 year 2 mons -3 days 04:05:06.789'", "'-1 second'", "'0'"],
        ),
        column(
            "ip",
            "inet",
            &["'192.168.0.1'", "'::1/128'", "'10.0.0.0/8'"],
        ),
        column("net", "cidr", &["'10.0.0.0/8'", "'2001:db8::/32'"]),
        column("mac", "macaddr", &["'08:00:2b:01:02:03'"]),
        column("mon", "money", &["1234.56", "-0.01"]),
        column("bits", "bit(3)", &["B'101'"]),
        column("vbits", "varbit", &["B'1'", "B''"]),
        column("pt", "point", &["'(1.5,-2)'"]),
        column(
            "bx",
            "box[]",
            &["ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)']", "'{}'"],
        ),
        column(
            "tsv",
            "tsvector",
            &["to_tsvector('english', 'The quick brown fox''s jumps')"],
        ),
        column("x", "xml", &[r#"'<a x="1">é &amp; "q"</a>'"#]),
        column("rng", "numrange", &["'[1.5,2)'", "'empty'"]),
        column("mrng", "int4multirange", &["'{[1,3), [5,7)}'"]),
        column(
            "j",
            "json",
            &[
                r#"'{"b": [1, 2.50, {"c": null}], "a": "é\u00e9\ud83d\ude00", "a": 1e2}'"#,
                r#"'"a string"'"#,
                "'null'",
                "'  [ ]  '",
                "'-0.0'",
            ],
        ),
        column(
            "jb",
            "jsonb",
            &[
                r#"'{"k": {"nested": [true, false, null, "s\"q"]}}'"#,
                "'12.3400'",
                "'[]'",
            ],
        ),
        column(
            "ia",
            "int[]",
            &[
                "'{1,NULL,3}'",
                "'{{1,2},{3,4}}'",
                "'[0:1]={5,6}'",
                "'{}'",
                "'[2:3][-1:0]={{1,2},{3,4}}'",
                "'{{{{{{1}}}}}}'",
            ],
        ),
        column(
            "ta",
            "text[]",
            &[
                r#"ARRAY['a"b', E'c\\d', 'x,y', '{}', 'NULL', NULL, '', ' space ', 'é😀', E'tab\there', 'null', 'a;b']"#,
                "'{{a,b},{c,NULL}}'",
            ],
        ),
        column("ba", "bool[]", &["'{t,f,NULL}'"]),
        column(
            "f8a",
            "float8[]",
            &["'{NaN,Infinity,1e300,0.1,-0,-1.5e-7}'"],
        ),
        column("na", "numeric[]", &["'{1.50,NaN,-Infinity}'"]),
        column("da", "date[]", &["'{2026-01-01,infinity,0044-03-15 BC}'"]),
        column(
            "tza",
            "timestamptz[]",
            &[
                "ARRAY['2026-11-30 15:47:39.5+00', 'infinity', '0044-03-15 12:00:00+00 BC', '1900-01-01 00:00:00+00']::timestamptz[]",
            ],
        ),
        column(
            "tsa",
            "timestamp[]",
            &["ARRAY['2026-11-30 15:47:39.5', '-infinity']::timestamp[]"],
        ),
        column(
            "jba",
            "jsonb[]",
            &[r#"ARRAY['{"a": [1, {"b": null}]}', 'null', '"s"', '[]']::jsonb[]"#],
        ),
        column(
            "ja",
            "json[]",
            &[r#"ARRAY['{"a":1,"a":2}', '"\u00e9"', '1e2']::json[]"#],
        ),
        column("byta", "bytea[]", &[r"ARRAY['\x00ff'::bytea, NULL]"]),
        column("md", "mood", &["'happy'", "'so \"so\"'"]),
        column("mda", "mood[]", &[r#"'{happy,"so \"so\"",NULL}'"#]),
        column("pos", "posint", &["5"]),
        column("pos2", "posint2", &["6"]),
        column("posa", "posint[]", &["'{1,2}'"]),
        column("tags", "tags", &[r#"'{"a,b",c}'"#, "'{}'"]),
        column("ina", "intarr", &["'{1,2}'"]),
        column("inaa", "intarr[]", &[r#"'{"{1,2}","{}",NULL}'"#]),
        column("tzd", "stamp", &["'2026-11-30 15:47:39+00'"]),
        column("jd", "doc", &[r#"'{"d": 1}'"#]),
        column(
            "pr",
            "pair",
            &[
                r#"ROW(1, 'x "y"', '2026-11-30 15:47:39+00')::pair"#,
                "ROW(NULL, NULL, NULL)::pair",
            ],
        ),
        column("pra", "pair[]", &[r#"ARRAY[ROW(1, 'a', NULL)::pair]"#]),
        column("prd", "pair_d", &[r#"ROW(2, 'b', 'infinity')::pair_d"#]),
        column("i2v", "int2vector", &["'1 2 3'"]),
        column("hs", "hstore", &[r#"'a=>1, "b c"=>NULL'"#]),
        column("hsa", "hstore[]", &[r#"ARRAY['a=>1'::hstore]"#]),
    ];

    /// The columns whose values go to the server whatever their text.
    const SERVER_COLUMNS: &[&str] = &["pr", "pra", "prd", "i2v", "hs", "hsa"];

    /// The settings each pass of the differential test runs with: time zones with offsets
    /// of half hours, negative ones, local mean time with seconds, and rounded floats.
    const SESSIONS: &[&str] = &[
        "SET TimeZone = 'UTC'",
        "SET TimeZone = 'Asia/Kolkata'",
        "SET TimeZone = 'America/St_Johns'",
        "SET TimeZone = 'Europe/Amsterdam'; SET extra_float_digits = 0",
        "SET TimeZone = 'America/New_York'; SET extra_float_digits = 3",
        "SET TimeZone = 'Asia/Kathmandu'; SET DateStyle = 'ISO, DMY'",
    ];

    /// Every column's text output (what `pgoutput` sends, the output function's, which
    /// `::text` is not for `bool`, `inet` or `char(n)`), converted here or by the server,
    /// equals `to_jsonb` of the value, compared as `jsonb` by the server.
    #[test]
    fn values_convert_as_to_jsonb_does() {
        let db = pg_audit_tempdb::shared()
            .unwrap()
            .create_database("values")
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(compare_all(db.url()));
    }

    async fn compare_all(url: &str) {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let rows = COLUMNS.iter().map(|c| c.values.len()).max().unwrap();
        let mut setup = String::from(
            "CREATE EXTENSION hstore;
CREATE TYPE mood AS ENUM ('happy', 'so \"so\"');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN posint2 AS posint;
CREATE DOMAIN tags AS text[];
CREATE DOMAIN intarr AS int[];
CREATE DOMAIN stamp AS timestamptz;
CREATE DOMAIN doc AS jsonb;
CREATE TYPE pair AS (a int, b text, at timestamptz);
CREATE DOMAIN pair_d AS pair;
CREATE TABLE t (row_number int PRIMARY KEY",
        );
        for c in COLUMNS {
            setup.push_str(&format!(", {} {}", c.name, c.sql_type));
        }
        setup.push_str(");\n");
        for row in 0..rows {
            let values: Vec<&str> = COLUMNS
                .iter()
                .map(|c| c.values.get(row).copied().unwrap_or("NULL"))
                .collect();
            setup.push_str(&format!(
                "INSERT INTO t VALUES ({row}, {});\n",
                values.join(", ")
            ));
        }
        client.batch_execute(&setup).await.unwrap();

        let types: HashMap<String, u32> = client
            .query(
                "SELECT attname::text, atttypid FROM pg_catalog.pg_attribute
                  WHERE attrelid = 't'::pg_catalog.regclass AND attnum > 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // And an OID no type has.
        let oids: Vec<u32> = COLUMNS.iter().map(|c| types[c.name]).chain([0]).collect();
        let kinds = kinds(&client, &oids).await.unwrap();
        assert!(
            oids[..COLUMNS.len()]
                .iter()
                .all(|oid| kinds.contains_key(oid))
        );
        assert!(!kinds.contains_key(&0));
        let server: Vec<&str> = COLUMNS
            .iter()
            .filter(|c| kinds[&types[c.name]].needs_server())
            .map(|c| c.name)
            .collect();
        assert_eq!(server, SERVER_COLUMNS);
        assert_eq!(kinds[&types["pos2"]], Kind::Number);
        assert_eq!(
            kinds[&types["inaa"]],
            array(array(Kind::Number, b','), b',')
        );
        assert_eq!(kinds[&types["bx"]], array(Kind::Text, b';'));
        assert_eq!(kinds[&types["pt"]], Kind::Text);

        let select = format!(
            "SELECT {} FROM t ORDER BY row_number",
            COLUMNS
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for session in SESSIONS {
            client.batch_execute(session).await.unwrap();
            let texts = text_rows(&client, &select).await;
            let mut converted = vec![Vec::with_capacity(COLUMNS.len()); rows];
            let (mut here, mut there) = (0, 0);
            for (i, c) in COLUMNS.iter().enumerate() {
                let oid = types[c.name];
                let mut pending = Vec::new();
                for (row, values) in texts.iter().enumerate() {
                    let json = match &values[i] {
                        None => Some("null".to_owned()),
                        Some(text) => kinds[&oid].json(text),
                    };
                    if json.is_none() {
                        pending.push(row);
                    } else if values[i].is_some() {
                        here += 1;
                    }
                    converted[row].push(json);
                }
                if pending.is_empty() {
                    continue;
                }
                let batch: Vec<&str> = pending
                    .iter()
                    .map(|&row| texts[row][i].as_deref().unwrap())
                    .collect();
                let jsons = via_server(&client, oid, &batch).await.unwrap();
                assert_eq!(jsons.len(), pending.len());
                for (row, json) in pending.into_iter().zip(jsons) {
                    converted[row][i] = Some(json);
                    there += 1;
                }
            }
            // Every value of the other columns was converted here.
            let count = |server: bool| -> usize {
                COLUMNS
                    .iter()
                    .filter(|c| SERVER_COLUMNS.contains(&c.name) == server)
                    .map(|c| c.values.len())
                    .sum()
            };
            assert_eq!((here, there), (count(false), count(true)), "{session}");
            let mut mismatches = Vec::new();
            for (row, values) in converted.iter().enumerate() {
                let mut object = String::from("{");
                for (c, json) in COLUMNS.iter().zip(values) {
                    if object.len() > 1 {
                        object.push(',');
                    }
                    write_string(c.name, &mut object);
                    object.push(':');
                    object.push_str(json.as_deref().unwrap());
                }
                object.push('}');
                let row = i32::try_from(row).unwrap();
                for r in client
                    .query(
                        "SELECT key, o.value::text, o.value IS NOT DISTINCT FROM c.value
                           FROM pg_catalog.jsonb_each((
                                  SELECT pg_catalog.to_jsonb(whole) - 'row_number'
                                    FROM t AS whole WHERE whole.row_number = $2)) AS o
                           FULL JOIN pg_catalog.jsonb_each($1::text::jsonb) AS c USING (key)",
                        &[&object, &row],
                    )
                    .await
                    .unwrap()
                {
                    let (key, want, equal): (String, Option<String>, bool) =
                        (r.get(0), r.get(1), r.get(2));
                    let i = COLUMNS.iter().position(|c| c.name == key).unwrap();
                    let got = values[i].as_deref().unwrap();
                    // Scalars are written as the server writes them, not only equal as jsonb.
                    let scalar = !matches!(
                        kinds[&types[key.as_str()]],
                        Kind::Json | Kind::Array { .. } | Kind::Server
                    );
                    if !equal || (scalar && want.as_deref() != Some(got)) {
                        mismatches.push(format!(
                            "row {row} {key}: to_jsonb {want:?}, converted {got:?}"
                        ));
                    }
                }
            }
            assert!(
                mismatches.is_empty(),
                "{session}:\n{}",
                mismatches.join("\n")
            );
        }
    }

    /// The rows of `select` as the output functions print them (the simple query protocol
    /// returns text).
    async fn text_rows(client: &Client, select: &str) -> Vec<Vec<Option<String>>> {
        client
            .simple_query(select)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }
}
