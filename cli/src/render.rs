//! Tables laid out by comfy-table and styled with anstyle, and times a person can read at a
//! glance.
//!
//! Views always render styled text; whether the styles reach the reader is decided where the
//! text is written, by anstream (`main` prints through it): colour on a terminal only, never
//! with `NO_COLOR` or `TERM=dumb`, always with `CLICOLOR_FORCE=1`.

use anstyle::{AnsiColor, Style};
use comfy_table::{ContentArrangement, TableStyle};
use time::OffsetDateTime;
use time::macros::format_description;

/// No styling.
pub const PLAIN: Style = Style::new();
/// Names a reader looks for first: services, deployment IDs, rule priorities, headers.
pub const EMPHASIS: Style = Style::new().bold();
/// Context a reader may skip: last changes, execution IDs, rule ARNs, former values.
pub const QUIET: Style = Style::new().dimmed();
/// A running skew window, a repair.
pub const WARNING: Style = AnsiColor::Yellow.on_default();
/// A missing pin, a failure.
pub const FAILURE: Style = AnsiColor::Red.on_default();
/// A lifecycle stage.
pub const STAGE: Style = AnsiColor::Cyan.on_default();
/// Success.
pub const SUCCESS: Style = AnsiColor::Green.on_default();

/// The style of a ledger status.
pub fn of_status(status: &str) -> Style {
    match status {
        "live" => SUCCESS,
        "draining" => WARNING,
        "testing" => STAGE,
        "rolled_back" => FAILURE,
        "retired" => QUIET,
        _ => PLAIN,
    }
}

/// `text` in `style` (reset after it).
pub fn paint(text: &str, style: Style) -> String {
    format!("{style}{text}{style:#}")
}

/// Columns apart by two spaces, no borders: the shape of `kubectl get` and `docker ps`, which
/// reads well in a terminal and splits on whitespace in scripts.
const COLUMN_GAP: u16 = 2;

/// A table: a header row and rows of styled cells, columns as wide as their widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    inner: comfy_table::Table,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        let mut inner = comfy_table::Table::new();
        inner
            .load_style(TableStyle::new())
            // Never wrap or cut: long cells stay on one line, as a pipe would get them.
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(headers.iter().map(|h| paint(h, EMPHASIS)));
        for column in inner.column_iter_mut() {
            column.set_padding((0, COLUMN_GAP));
        }
        // The last column needs no gap after it.
        if let Some(last) = inner.column_iter_mut().last() {
            last.set_padding((0, 0));
        }
        Self { inner }
    }

    pub fn row(&mut self, cells: Vec<(String, Style)>) {
        self.inner
            .add_row(cells.iter().map(|(text, style)| paint(text, *style)));
    }

    pub fn render(&self) -> String {
        self.inner.trim_fmt() + "\n"
    }
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

/// What a reader sees where colour is off (piped, `NO_COLOR`): the text without its styles.
#[cfg(test)]
pub fn plain(styled: &str) -> String {
    anstream::adapter::strip_str(styled).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn tables_pad_columns_and_colour_only_when_asked() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec![("live".into(), SUCCESS), ("x".into(), PLAIN)]);
        t.row(vec![("x".into(), PLAIN), ("".into(), PLAIN)]);
        assert_eq!(plain(&t.render()), "A     LONGER\nlive  x\nx\n");
        let coloured = t.render();
        assert!(coloured.contains("\x1b[32mlive\x1b[0m"), "{coloured:?}");
        // Styles take no room: the columns line up the same with colour on.
        assert!(coloured.contains("\x1b[32mlive\x1b[0m  x"), "{coloured:?}");
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
