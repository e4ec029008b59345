//! Printing results: an aligned table for people, JSON for scripts; standard output that a
//! closed pipe (`pg-audit check | head -1`) ends quietly; and progress, on standard error as a
//! bar when it is a terminal, silent when it is not.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

/// Set once standard output is a closed pipe: nothing more is written.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to standard output. A closed pipe is not an error: what follows is dropped,
/// and the program still ends with the exit status its work decided.
pub(crate) fn print(text: &str) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CLOSED.store(true, Ordering::Relaxed);
        } else {
            eprintln!("error: cannot write to standard output: {e}");
            CLOSED.store(true, Ordering::Relaxed);
        }
    }
}

/// Set by `--log-format json`: diagnostics are JSON objects, one a line.
static JSON_DIAGNOSTICS: AtomicBool = AtomicBool::new(false);

/// Writes diagnostics as JSON objects from now on.
pub(crate) fn json_diagnostics() {
    JSON_DIAGNOSTICS.store(true, Ordering::Relaxed);
}

/// How serious a diagnostic the program writes itself (outside `tracing`) is.
#[derive(Clone, Copy)]
pub(crate) enum Level {
    /// What the program is doing (the admin's address).
    Info,
    /// Worth knowing (`note:`).
    Note,
    /// Something is missing or wrong, and the command goes on (`warning:`).
    Warn,
    /// The command failed (`error:`).
    Error,
}

/// A diagnostic on standard error: `warning: ...` and the like, or with `--log-format json`
/// an object as `tracing`'s are written (`timestamp`, `level`, `fields.message`).
pub(crate) fn diagnostic(level: Level, text: &str) {
    if JSON_DIAGNOSTICS.load(Ordering::Relaxed) {
        let name = match level {
            Level::Info | Level::Note => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        };
        let object = serde_json::json!({
            "timestamp": now_rfc3339(),
            "level": name,
            "fields": { "message": text },
        });
        eprintln!("{object}");
    } else {
        let prefix = match level {
            Level::Info => "",
            Level::Note => "note: ",
            Level::Warn => "warning: ",
            Level::Error => "error: ",
        };
        eprintln!("{prefix}{text}");
    }
}

/// The time now as RFC 3339 in UTC, to the microsecond.
fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (days, secs) = pg_audit::calendar::days_and_seconds(now.as_secs() as i64);
    let (y, m, d) = pg_audit::calendar::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_micros()
    )
}

/// [`print()`] of a line.
pub(crate) fn line(text: &str) {
    print(&format!("{text}\n"));
}

/// Progress through `len` steps of a long operation: a bar on standard error when it is a
/// terminal and `-v` is off, nothing otherwise (so pipes and logs get results only).
pub(crate) struct Progress(indicatif::ProgressBar);

impl Progress {
    pub(crate) fn new(len: usize, what: &str) -> Progress {
        use std::io::IsTerminal as _;
        // With -v the log lines say what happens, and a bar would interleave with them.
        let verbose = tracing::enabled!(target: "pg_audit", tracing::Level::INFO);
        let bar = if std::io::stderr().is_terminal() && !verbose {
            indicatif::ProgressBar::new(len as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_owned());
        Progress(bar)
    }

    /// Starts the next step, named `step`.
    pub(crate) fn step(&self, step: &str) {
        self.0.set_message(escape_controls(step));
    }

    /// At step `step` (from 0) of `steps` of `phase`, named `item`: for an operation that
    /// reports where it is rather than each step's end.
    pub(crate) fn at(&self, phase: &str, step: usize, steps: usize, item: &str) {
        self.0.set_prefix(phase.to_owned());
        self.0.set_length(steps as u64);
        self.0.set_position(step as u64);
        self.step(item);
    }

    /// Ends a step.
    pub(crate) fn done(&self) {
        self.0.inc(1);
    }

    /// Prints a result line on standard output without tearing the bar.
    pub(crate) fn line(&self, text: &str) {
        self.0.suspend(|| line(text));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Rows to print, either as an aligned table or as a JSON array of objects.
pub(crate) struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
}

impl Table {
    pub(crate) fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Ends a command that shows its rows at the end: with `json` the rows as JSON (an empty
    /// array when there are none); otherwise the table followed by `summary` (when not empty),
    /// or `empty` alone when there are no rows. Values from the log in `empty` and `summary`
    /// are the caller's to escape ([`escape_controls`]).
    pub(crate) fn finish(&self, json: bool, empty: &str, summary: &str) {
        if json {
            self.print(true);
        } else if self.is_empty() {
            line(empty);
        } else {
            self.print(false);
            if !summary.is_empty() {
                line(summary);
            }
        }
    }

    /// Ends a command that told each row as it happened (a line over its progress): with
    /// `json` the rows as JSON; otherwise nothing more, or `empty` when there were no rows.
    pub(crate) fn finish_told(&self, json: bool, empty: &str) {
        if json {
            self.print(true);
        } else if self.is_empty() {
            line(empty);
        }
    }

    pub(crate) fn print(&self, json: bool) {
        if json {
            let objects: Vec<Value> = self
                .rows
                .iter()
                .map(|row| {
                    Value::Object(
                        self.columns
                            .iter()
                            .map(|c| (*c).to_owned())
                            .zip(row.iter().cloned())
                            .collect(),
                    )
                })
                .collect();
            line(&serde_json::to_string_pretty(&objects).expect("serialisable"));
            return;
        }
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(cell).collect())
            .collect();
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |values: Vec<String>| {
            let padded: Vec<String> = values
                .iter()
                .zip(&widths)
                // Padded by hand: `format!`'s width stops at 65,535.
                .map(|(v, w)| format!("{v}{}", " ".repeat(w.saturating_sub(v.chars().count()))))
                .collect();
            line(padded.join("  ").trim_end());
        };
        line(self.columns.iter().map(|c| (*c).to_owned()).collect());
        line(widths.iter().map(|w| "-".repeat(*w)).collect());
        for row in cells {
            line(row);
        }
    }
}

/// The most characters a table cell shows; `--json` prints every value whole.
const CELL_CHARS: usize = 2000;

/// A value as a table cell: strings bare, NULL empty, the rest as JSON; control characters
/// escaped either way, so a value from the log cannot move the cursor, recolour the terminal
/// or reorder what is shown; cut after [`CELL_CHARS`] characters, saying how many more.
fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(s) => escape_controls(s),
        other => escape_controls(&other.to_string()),
    };
    let count = text.chars().count();
    if count <= CELL_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(CELL_CHARS).collect();
    cut.push_str(&format!(
        "… ({} more characters; --json shows all)",
        count - CELL_CHARS
    ));
    cut
}

/// `text` with every control character (C0, DEL, C1) and bidirectional control written as an
/// escape: `\n`, `\t`, `\r`, `\u{1b}`, `\u{202e}`.
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&c.escape_unicode().to_string());
            }
            c => out.push(c),
        }
    }
    out
}

/// Unicode's bidirectional formatting characters (they reorder the text around them).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_in_cells() {
        assert_eq!(
            cell(&Value::String("a\u{1b}[2Jb\nc\u{202e}d\u{7f}".into())),
            "a\\u{1b}[2Jb\\nc\\u{202e}d\\u{7f}"
        );
        assert_eq!(cell(&Value::String("ünïcödé 日本".into())), "ünïcödé 日本");
    }
}
