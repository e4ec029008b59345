//! Printing results: an aligned table for people, JSON for scripts.

use serde_json::Value;

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
            println!(
                "{}",
                serde_json::to_string_pretty(&objects).expect("serialisable")
            );
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
                .map(|(v, w)| format!("{v:<w$}"))
                .collect();
            println!("{}", padded.join("  ").trim_end());
        };
        line(self.columns.iter().map(|c| (*c).to_owned()).collect());
        line(widths.iter().map(|w| "-".repeat(*w)).collect());
        for row in cells {
            line(row);
        }
    }
}

/// A value as a table cell: strings bare, NULL empty, the rest as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.replace('\n', "\\n"),
        other => other.to_string(),
    }
}
