//! How the commands print: pretty JSON for `--json`, aligned tables and ages otherwise.

use serde::Serialize;

pub(super) fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// How long ago a Unix time was, in the largest fitting unit (`42s`, `5m`, `3h`, `2d`).
pub(super) fn age(ts: i64) -> String {
    let secs = (crate::time::unix_now() - ts).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// How long until a Unix time, in the largest fitting unit (`in 6d`), or `expired`.
pub(super) fn until(ts: i64) -> String {
    let secs = ts - crate::time::unix_now();
    match secs {
        s if s <= 0 => "expired".into(),
        s if s < 120 => format!("in {s}s"),
        s if s < 7200 => format!("in {}m", s / 60),
        s if s < 172800 => format!("in {}h", s / 3600),
        s => format!("in {}d", s / 86400),
    }
}

/// Prints rows as an aligned table. Cells are others' text (names, a guest's file names): their
/// control characters are escaped unless `--raw` ([`super::terminal`]).
pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|c| super::terminal::line(&c).into_owned())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}
