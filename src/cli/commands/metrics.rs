//! `sandbox metrics ID [--watch]`: a sandbox's CPU, memory and disk samples as a table; with
//! `--watch`, new samples are printed as they come until Ctrl-C.

use std::time::Duration;

use super::client;
use super::output::print_json;
use crate::proto::api::SandboxMetric;

/// How often `--watch` asks for new samples.
const WATCH_EVERY: Duration = Duration::from_secs(2);

const HEADERS: [&str; 7] = [
    "TIME",
    "CPU",
    "MEM USED",
    "MEM TOTAL",
    "CACHE",
    "DISK USED",
    "DISK TOTAL",
];
const WIDTHS: [usize; 7] = [8, 14, 9, 9, 9, 9, 10];

pub async fn metrics(id: &str, watch: bool, since: Duration, json: bool) -> anyhow::Result<i32> {
    let c = client()?;
    let start = crate::time::unix_now() - since.as_secs() as i64;
    let samples = c.sandbox_metrics(id, Some(start), None).await?;
    if json && !watch {
        print_json(&samples)?;
        return Ok(0);
    }
    let print = |m: &SandboxMetric| {
        if json {
            println!("{}", serde_json::to_string(m).unwrap_or_default());
        } else {
            line(&row(m));
        }
    };
    if !json {
        line(&HEADERS.map(str::to_string));
    }
    samples.iter().for_each(print);
    if !watch {
        if samples.is_empty() {
            eprintln!("no samples yet: a running sandbox gets one every few seconds");
        }
        return Ok(0);
    }
    let mut last = samples.last().map_or(start - 1, |m| m.timestamp);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        for m in c.sandbox_metrics(id, Some(last + 1), None).await? {
            last = last.max(m.timestamp);
            print(&m);
        }
    }
}

fn line(cells: &[String; 7]) {
    let s: Vec<String> = cells
        .iter()
        .zip(WIDTHS)
        .map(|(c, w)| format!("{c:<w$}"))
        .collect();
    println!("{}", s.join("  ").trim_end());
}

fn row(m: &SandboxMetric) -> [String; 7] {
    let secs = m.timestamp.rem_euclid(86_400);
    [
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
        format!("{:.1}% of {}", m.cpu_used_pct, m.cpu_count),
        size(m.mem_used),
        size(m.mem_total),
        size(m.mem_cache),
        size(m.disk_used),
        size(m.disk_total),
    ]
}

/// Bytes in the largest fitting binary unit, one decimal (`512.0M`, `1.9G`).
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes}B"),
        _ => format!("{v:.1}{}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_easily() {
        assert_eq!(super::size(0), "0B");
        assert_eq!(super::size(512 << 20), "512.0M");
        assert_eq!(super::size(3 << 29), "1.5G");
    }
}
