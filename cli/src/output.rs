//! Printing results: aligned tables for people, JSON for scripts.

use std::io::Write;

use serde_json::Value;

use crate::args::Format;

/// Prints a line to stdout, as `println!` does, ending the process when
/// stdout cannot take it ([`stdout_failed`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::print_line(format_args!($($arg)*))
    };
}

/// Prints a line to stderr, as `eprintln!` does, but never panics: a note
/// nobody can read any more (stderr closed, `2>&1 | head`) is dropped.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::print_error_line(format_args!($($arg)*))
    };
}

/// Writes `text` and a line end to stderr; see [`errln!`].
pub fn print_error_line(text: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{text}");
}

/// Writes `text` and a line end to stdout; see [`outln!`].
pub fn print_line(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        stdout_failed(&error);
    }
}

/// Writes `bytes` to stdout as they are; see [`outln!`].
pub fn print_bytes(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        stdout_failed(&error);
    }
}

/// Ends the process after a failed write to stdout: quietly and with
/// success when its reader went away (`ssectl … | head`), as Unix tools
/// do; with exit 1 and why otherwise (a full disk), never with a panic.
pub fn stdout_failed(error: &std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    crate::errln!("ssectl: cannot write to stdout: {error}");
    std::process::exit(1);
}

/// Where and how a command prints its result.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// The format asked for.
    pub format: Format,
}

impl Output {
    /// An output in `format`.
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    /// Whether JSON was asked for.
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Prints a value as one line of JSON.
    pub fn print_json(&self, value: &Value) {
        crate::outln!("{value}");
    }
}

/// Prints rows under headers, each column as wide as its widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        crate::outln!("{}", text.trim_end());
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// Prints `key  value` pairs, keys aligned.
pub fn print_pairs(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in pairs {
        crate::outln!("{key:width$}  {value}");
    }
}

/// A JSON field as text for a table: strings bare, numbers as written,
/// absent as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A byte count for people: `0 B`, `1.5 KiB`, `3.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Seconds for people: `0` means no limit.
pub fn age(seconds: u64) -> String {
    match seconds {
        0 => "unlimited".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
