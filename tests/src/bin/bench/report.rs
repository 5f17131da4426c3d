//! Statistics and the printed table.

use std::time::Duration;

/// Median and 90th percentile (nearest rank) of `values`.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if p == 50.0 && sorted.len().is_multiple_of(2) {
        let mid = sorted.len() / 2;
        return (sorted[mid - 1] + sorted[mid]) / 2.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Meets,
    Misses,
    /// No target, or not measured.
    Info,
}

impl Verdict {
    pub fn of(ok: bool) -> Verdict {
        if ok { Verdict::Meets } else { Verdict::Misses }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Meets => "meets",
            Verdict::Misses => "**MISSES**",
            Verdict::Info => "-",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub subject: String,
    pub measured: String,
    pub target: String,
    pub verdict: Verdict,
    pub method: String,
}

impl Row {
    pub fn new(
        figure: &str,
        subject: impl Into<String>,
        measured: impl Into<String>,
        target: &str,
        verdict: Verdict,
        method: impl Into<String>,
    ) -> Row {
        Row {
            figure: figure.to_owned(),
            subject: subject.into(),
            measured: measured.into(),
            target: target.to_owned(),
            verdict,
            method: method.into(),
        }
    }
}

/// The rows as a Markdown table; the figure and method are printed once per group of rows.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| figure | subject | measured | target | verdict | method |\n|---|---|---|---|---|---|\n",
    );
    let mut last_figure = "";
    let mut last_method = "";
    for row in rows {
        let figure = if row.figure == last_figure {
            ""
        } else {
            &row.figure
        };
        let method = if row.figure == last_figure && row.method == last_method {
            "〃"
        } else {
            &row.method
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            figure,
            row.subject,
            row.measured,
            row.target,
            row.verdict.text(),
            method
        ));
        last_figure = &row.figure;
        last_method = &row.method;
    }
    out
}

/// `Query, DescribeRules ×2, CreateRule`
pub fn op_list(ops: &[String]) -> String {
    if ops.is_empty() {
        return "no call".to_owned();
    }
    let mut counted: Vec<(String, usize)> = Vec::new();
    for op in ops {
        match counted.iter_mut().find(|(o, _)| o == op) {
            Some((_, n)) => *n += 1,
            None => counted.push((op.clone(), 1)),
        }
    }
    counted
        .into_iter()
        .map(|(op, n)| if n == 1 { op } else { format!("{op} ×{n}") })
        .collect::<Vec<_>>()
        .join(", ")
}
