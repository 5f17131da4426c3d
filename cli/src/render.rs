//! Plain-text tables, colours only on a terminal, and times a person can read at a glance.

use std::io::IsTerminal;

use time::OffsetDateTime;
use time::macros::format_description;

/// Whether to colour output: only on a terminal, never with `NO_COLOR` or `TERM=dumb`;
/// `CLICOLOR_FORCE=1` forces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn plain() -> Self {
        Self { color: false }
    }

    pub fn detect() -> Self {
        let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
        if set("NO_COLOR") {
            return Self::plain();
        }
        if std::env::var("CLICOLOR_FORCE").is_ok_and(|v| v != "0") {
            return Self { color: true };
        }
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Self {
            color: !dumb && std::io::stdout().is_terminal(),
        }
    }

    pub fn paint(&self, text: &str, color: Color) -> String {
        if !self.color || color == Color::None {
            return text.to_owned();
        }
        format!("\x1b[{}m{text}\x1b[0m", color.code())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    None,
    Green,
    Yellow,
    Cyan,
    Red,
    Dim,
    Bold,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::None => "0",
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Cyan => "36",
            Color::Red => "31",
            Color::Dim => "2",
            Color::Bold => "1",
        }
    }

    /// The colour of a ledger status.
    pub fn of_status(status: &str) -> Color {
        match status {
            "live" => Color::Green,
            "draining" => Color::Yellow,
            "testing" => Color::Cyan,
            "rolled_back" => Color::Red,
            "retired" => Color::Dim,
            _ => Color::None,
        }
    }
}

/// A table: a header row and rows of cells, columns padded to their widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<(String, Color)>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<(String, Color)>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self, style: &Style) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, (text, _)) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(width(text));
            }
        }
        let line = |cells: Vec<(String, Color)>| {
            let mut out = String::new();
            for (i, (text, color)) in cells.into_iter().enumerate().take(columns) {
                let last = i + 1 == columns;
                let pad = if last {
                    0
                } else {
                    widths[i].saturating_sub(width(&text))
                };
                out.push_str(&style.paint(&text, color));
                out.push_str(&" ".repeat(pad));
                if !last {
                    out.push_str("  ");
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = vec![line(
            self.headers
                .iter()
                .map(|h| (h.clone(), Color::Bold))
                .collect(),
        )];
        out.extend(self.rows.iter().cloned().map(line));
        out.join("\n") + "\n"
    }
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// `2026-03-01 12:00:00Z`
pub fn stamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]Z"
    ))
    .unwrap_or_else(|_| "?".to_owned())
}

/// `1h 2m`, `59m 3s`, `42s`, `3d 4h`.
pub fn short_duration(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `3m 2s ago` or `in 59m 0s`.
pub fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let seconds = (t - now).whole_seconds();
    if seconds >= 0 {
        format!("in {}", short_duration(seconds))
    } else {
        format!("{} ago", short_duration(seconds))
    }
}

/// Cuts `text` to `max` characters, with an ellipsis.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn tables_pad_columns_and_colour_only_when_asked() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec![
            ("live".into(), Color::Green),
            ("x".into(), Color::None),
        ]);
        t.row(vec![("x".into(), Color::None), ("".into(), Color::None)]);
        assert_eq!(t.render(&Style::plain()), "A     LONGER\nlive  x\nx\n");
        let coloured = t.render(&Style { color: true });
        assert!(coloured.contains("\x1b[32mlive\x1b[0m"), "{coloured:?}");
    }

    #[test]
    fn times_read_at_a_glance() {
        let now = datetime!(2026-03-01 12:00 UTC);
        assert_eq!(stamp(now), "2026-03-01 12:00:00Z");
        assert_eq!(
            relative(now + time::Duration::seconds(3545), now),
            "in 59m 5s"
        );
        assert_eq!(
            relative(now - time::Duration::seconds(7300), now),
            "2h 1m ago"
        );
        assert_eq!(short_duration(42), "42s");
        assert_eq!(short_duration(90_000), "1d 1h");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
