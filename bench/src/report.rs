//! `sse-bench table`: result lines (JSON, one per run) to Markdown tables.
//!
//! Runs of the same scenario, target and variant are folded into one row
//! holding the median of each figure; the row says how many runs it folds.

use std::collections::BTreeMap;

use serde_json::Value;

/// A column: header, result field (or JSON pointer, from `/`), decimals,
/// scale.
struct Column(&'static str, &'static str, usize, f64);

fn columns(scenario: &str) -> Vec<Column> {
    let common_rate = [
        Column("subscribers", "subscribers", 0, 1.0),
        Column("subjects", "subjects", 0, 1.0),
        Column("published ev/s", "publish_rate", 0, 1.0),
        Column("deliveries/s", "deliveries_per_s", 0, 1.0),
        Column("server CPU-s", "server_cpu_s", 2, 1.0),
        Column(
            "deliveries per server CPU-s",
            "deliveries_per_cpu_s",
            0,
            1.0,
        ),
        Column("nats CPU-s", "nats_cpu_s", 2, 1.0),
        Column("client CPU-s", "client_cpu_s", 2, 1.0),
        Column("lost", "lost", 0, 1.0),
        Column("dups", "dups", 0, 1.0),
        Column("p50 ms", "p50_ms", 1, 1.0),
        Column("p99 ms", "p99_ms", 1, 1.0),
        Column("p99.9 ms", "p999_ms", 1, 1.0),
        Column("max ms", "max_ms", 1, 1.0),
        Column("server peak RSS MiB", "server_hwm_kib", 1, 1.0 / 1024.0),
    ];
    match scenario {
        "idle" => vec![
            Column("connections", "subscribers", 0, 1.0),
            Column("connect s", "connect_s", 1, 1.0),
            Column("RSS before MiB", "server_rss_before_kib", 1, 1.0 / 1024.0),
            Column(
                "RSS with them MiB",
                "server_rss_connected_kib",
                1,
                1.0 / 1024.0,
            ),
            Column("KiB per connection", "rss_per_conn_kib", 2, 1.0),
            Column("server peak RSS MiB", "server_hwm_kib", 1, 1.0 / 1024.0),
        ],
        "storm" => vec![
            Column("subscribers", "subscribers", 0, 1.0),
            Column("events while away", "published", 0, 1.0),
            Column("all caught up after kill, s", "catch_up_s", 2, 1.0),
            Column("caught up", "caught_up", 0, 1.0),
            Column("lost", "lost", 0, 1.0),
            Column("dups", "dups", 0, 1.0),
            Column("reconnects", "reconnects", 0, 1.0),
            Column("node B CPU-s", "server_cpu_s", 2, 1.0),
            Column("client CPU-s", "client_cpu_s", 2, 1.0),
            Column("p50 ms", "p50_ms", 0, 1.0),
            Column("p99 ms", "p99_ms", 0, 1.0),
        ],
        "catchup" => vec![
            Column("backlog", "expected", 0, 1.0),
            Column("replay s", "catch_up_s", 2, 1.0),
            Column("replay events/s", "replay_per_s", 0, 1.0),
            Column("from JetStream", "/replay_sources/jetstream", 0, 1.0),
            Column("from memory", "/replay_sources/memory", 0, 1.0),
            Column("lost", "lost", 0, 1.0),
            Column("dups", "dups", 0, 1.0),
            Column("server CPU-s", "server_cpu_s", 2, 1.0),
        ],
        _ => common_rate.into_iter().collect(),
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        other => other.as_f64(),
    }
}

/// Renders the tables for every scenario found in `lines`.
pub fn render(lines: &str) -> anyhow::Result<String> {
    let runs: Vec<Value> = lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let order = ["fanout", "latency", "quiet", "idle", "storm", "catchup"];
    let mut groups: BTreeMap<(usize, String, bool, String, String), Vec<&Value>> = BTreeMap::new();
    for run in &runs {
        let scenario = run["scenario"].as_str().unwrap_or_default().to_owned();
        let rank = order
            .iter()
            .position(|s| *s == scenario)
            .unwrap_or(order.len());
        let target = run["target"].as_str().unwrap_or_default().to_owned();
        let variant = run["variant"].as_str().unwrap_or_default().to_owned();
        groups
            .entry((rank, scenario, target != "node", target, variant))
            .or_default()
            .push(run);
    }
    let mut out = String::new();
    let mut current = String::new();
    for ((_, scenario, _, target, variant), runs) in &groups {
        let cols = columns(scenario);
        if *scenario != current {
            current.clone_from(scenario);
            out.push_str(&format!("\n#### {scenario}\n\n| target | runs |"));
            for c in &cols {
                out.push_str(&format!(" {} |", c.0));
            }
            out.push_str("\n|---|---|");
            out.push_str(&"---:|".repeat(cols.len()));
            out.push('\n');
        }
        let name = if variant.is_empty() {
            target.clone()
        } else {
            format!("{target} ({variant})")
        };
        out.push_str(&format!("| {name} | {} |", runs.len()));
        for c in &cols {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| {
                    if c.1.starts_with('/') {
                        r.pointer(c.1).and_then(number)
                    } else {
                        number(&r[c.1])
                    }
                })
                .collect();
            match median(values) {
                Some(v) => out.push_str(&format!(" {:.*} |", c.2, v * c.3)),
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn folds_runs_into_medians() {
        let lines = r#"{"scenario":"idle","target":"node","variant":"","subscribers":10,"rss_per_conn_kib":4.0}
{"scenario":"idle","target":"node","variant":"","subscribers":10,"rss_per_conn_kib":6.0}
{"scenario":"idle","target":"node","variant":"","subscribers":10,"rss_per_conn_kib":5.0}"#;
        let table = super::render(lines).unwrap();
        assert!(
            table.contains("| node | 3 | 10 | – | – | – | 5.00 | – |"),
            "{table}"
        );
    }
}
