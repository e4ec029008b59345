//! Collecting measurements and printing them as a table of ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A goal from the performance issue, checked against the median ratio.
#[derive(Clone, Copy)]
pub(crate) enum Goal {
    AtLeast(f64),
    AtMost(f64),
    None,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Higher is better; shown as a ratio to the plain table.
    Throughput,
    /// Lower is better; shown as a ratio to the plain table.
    Time,
    /// Shown as measured.
    Absolute,
}

/// One workload: every variant's value in every repetition.
pub(crate) struct Measure {
    name: String,
    kind: Kind,
    goal: Goal,
    values: BTreeMap<String, Vec<f64>>,
    order: Vec<String>,
    /// The variant the goal is checked against.
    judged: &'static str,
}

impl Measure {
    fn new(name: &str, kind: Kind, goal: Goal) -> Self {
        Measure {
            name: name.to_owned(),
            kind,
            goal,
            values: BTreeMap::new(),
            order: Vec::new(),
            judged: "pg-audit",
        }
    }

    /// Checks the goal against `variant` rather than pg-audit's default design.
    pub(crate) fn judging(mut self, variant: &'static str) -> Self {
        self.judged = variant;
        self
    }

    pub(crate) fn throughput(name: &str, goal: Goal) -> Self {
        Self::new(name, Kind::Throughput, goal)
    }

    pub(crate) fn time(name: &str, goal: Goal) -> Self {
        Self::new(name, Kind::Time, goal)
    }

    pub(crate) fn storage(name: &str) -> Self {
        Self::new(name, Kind::Absolute, Goal::None)
    }

    pub(crate) fn count(name: &str) -> Self {
        Self::new(name, Kind::Absolute, Goal::None)
    }

    pub(crate) fn add(&mut self, variant: &str, value: f64) {
        if !self.values.contains_key(variant) {
            self.order.push(variant.to_owned());
        }
        self.values
            .entry(variant.to_owned())
            .or_default()
            .push(value);
    }

    /// Per repetition, the variant's value over the plain table's.
    fn ratios(&self, variant: &str) -> Vec<f64> {
        let plain = &self.values["plain"];
        self.values[variant]
            .iter()
            .zip(plain)
            .map(|(v, p)| v / p)
            .collect()
    }
}

fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0], sorted[n - 1])
}

pub(crate) struct Report {
    version: String,
    reps: usize,
    measures: Vec<Measure>,
}

impl Report {
    pub(crate) fn new(version: &str, reps: usize) -> Self {
        Report {
            version: version.to_owned(),
            reps,
            measures: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, measure: Measure) {
        self.measures.push(measure);
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n{}", self.version);
        let _ = writeln!(
            out,
            "{} repetitions; ratios against the plain table in the same repetition: median (min–max).",
            self.reps
        );
        let _ = writeln!(
            out,
            "Throughput ratios: higher is better. Time ratios (bulk): lower is better.\n"
        );
        for group in self.groups() {
            let header: Vec<&str> = group[0].order.iter().map(String::as_str).collect();
            let _ = writeln!(out, "| workload | {} | goal |", header.join(" | "));
            let _ = writeln!(out, "|---|{}---|", "---|".repeat(header.len()));
            for m in group {
                let mut cells = Vec::new();
                for variant in &m.order {
                    cells.push(self.cell(m, variant));
                }
                let goal = match m.goal {
                    Goal::AtLeast(g) => self.verdict(m, format!("≥ {g:.2}×"), |r| r >= g),
                    Goal::AtMost(g) => self.verdict(m, format!("≤ {g}×"), |r| r <= g),
                    Goal::None => String::new(),
                };
                let _ = writeln!(out, "| {} | {} | {goal} |", m.name, cells.join(" | "));
            }
            out.push('\n');
        }
        out
    }

    /// Measures with the same variant columns, in order, grouped into one table each.
    fn groups(&self) -> Vec<Vec<&Measure>> {
        let mut groups: Vec<Vec<&Measure>> = Vec::new();
        for m in &self.measures {
            match groups.last_mut() {
                Some(g) if g[0].order == m.order => g.push(m),
                _ => groups.push(vec![m]),
            }
        }
        groups
    }

    fn cell(&self, m: &Measure, variant: &str) -> String {
        match m.kind {
            Kind::Absolute => {
                let (median, min, max) = stats(&m.values[variant]);
                format!("{median:.1} ({min:.1}–{max:.1})")
            }
            _ if variant == "plain" => {
                let (median, _, _) = stats(&m.values[variant]);
                match m.kind {
                    Kind::Time => format!("{:.0} ms", median * 1000.0),
                    _ => format!("{median:.0} tx/s"),
                }
            }
            _ => {
                let (median, min, max) = stats(&m.ratios(variant));
                format!("{median:.2}× ({min:.2}–{max:.2})")
            }
        }
    }

    /// The goal, and whether the judged variant (pg-audit's default design unless the
    /// measure says otherwise) meets it (its median).
    fn verdict(&self, m: &Measure, goal: String, ok: impl Fn(f64) -> bool) -> String {
        let median = m
            .values
            .contains_key(m.judged)
            .then(|| stats(&m.ratios(m.judged)).0);
        match median {
            Some(r) if ok(r) => format!("{goal} met"),
            Some(_) => format!("{goal} **not met**"),
            None => goal,
        }
    }
}
