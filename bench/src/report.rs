//! `sse-bench table`: result lines (JSON, one per run) to Markdown tables,
//! one row per run; `sse-bench check`: the runs that failed.
//!
//! Rows are not folded into medians: a run that went wrong stays in sight.
//! Each row says whether the run is sound (every connection streamed, every
//! event arrived once, in order) and, at a set rate, whether the publisher
//! kept to it. For the equal-rate scenarios a headline table pairs the
//! targets of each run: deliveries per server CPU-second, as a ratio to the
//! bare write loop and to Nchan, and the p99s side by side. At 100 events/s
//! it also gives node ÷ bare per client CPU ([`machine_adjusted`]).

use std::collections::BTreeMap;

use serde_json::Value;

/// A column: header, result field (or JSON pointer, from `/`), decimals,
/// scale.
struct Column(&'static str, &'static str, usize, f64);

/// Scenarios in the order of the report; the first two are the equal-rate
/// headline.
const ORDER: [&str; 7] = [
    "latency",
    "fanout",
    "saturation",
    "quiet",
    "idle",
    "storm",
    "catchup",
];

fn columns(scenario: &str) -> Vec<Column> {
    let sound = [
        Column("connected", "connected_count", 0, 1.0),
        Column("lost", "lost", 0, 1.0),
        Column("dups", "dups", 0, 1.0),
        Column("gaps", "gaps", 0, 1.0),
    ];
    let mut cols = match scenario {
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
            Column("reconnects", "reconnects", 0, 1.0),
            Column("node B + NATS CPU-s", "server_cpu_s", 2, 1.0),
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
            Column("server CPU-s", "server_cpu_s", 2, 1.0),
        ],
        _ => vec![
            Column("subscribers", "subscribers", 0, 1.0),
            Column("subjects", "subjects", 0, 1.0),
            Column("asked ev/s", "asked_rate", 0, 1.0),
            Column("published ev/s", "publish_rate", 0, 1.0),
            Column("deliveries/s", "deliveries_per_s", 0, 1.0),
            Column("server CPU-s", "server_cpu_s", 2, 1.0),
            Column("of which NATS", "nats_cpu_s", 2, 1.0),
            Column(
                "deliveries per server CPU-s",
                "deliveries_per_cpu_s",
                0,
                1.0,
            ),
            Column("client CPU-s", "client_cpu_s", 2, 1.0),
            Column("p50 ms", "p50_ms", 1, 1.0),
            Column("p99 ms", "p99_ms", 1, 1.0),
            Column("p99.9 ms", "p999_ms", 1, 1.0),
            Column("max ms", "max_ms", 1, 1.0),
            Column("JetStream ack p99 ms", "ack_p99_ms", 1, 1.0),
            Column("JetStream consumer p99 ms", "consumer_p99_ms", 1, 1.0),
            Column("node: read p99 ≤ ms", "node_read_p99_le_ms", 1, 1.0),
            Column("node: written p99 ≤ ms", "node_written_p99_le_ms", 1, 1.0),
            Column("node: sockets full", "node_parked_refusals", 0, 1.0),
            Column("server peak RSS MiB", "server_hwm_kib", 1, 1.0 / 1024.0),
        ],
    };
    cols.extend(sound);
    cols
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        other => other.as_f64(),
    }
}

fn field(run: &Value, name: &str) -> Option<f64> {
    if name.starts_with('/') {
        run.pointer(name).and_then(number)
    } else {
        number(&run[name])
    }
}

fn text<'a>(run: &'a Value, name: &str) -> &'a str {
    run[name].as_str().unwrap_or_default()
}

/// `node`, `nchan`, `bare`, with the variant in brackets.
fn target_name(run: &Value) -> String {
    match text(run, "variant") {
        "" => text(run, "target").to_owned(),
        variant => format!("{} ({variant})", text(run, "target")),
    }
}

/// The run number: the last `/` part of the label (`fanout/node/2`).
fn run_number(run: &Value) -> String {
    text(run, "label")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Why a run is not sound; empty when it is. Lines written before the
/// `failures` field are judged from their counters.
fn problems(run: &Value) -> Vec<String> {
    if let Some(list) = run["failures"].as_array() {
        return list
            .iter()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
    }
    let mut out = Vec::new();
    for name in ["lost", "dups", "gaps"] {
        if field(run, name).unwrap_or(0.0) > 0.0 {
            out.push(format!("{} {name}", field(run, name).unwrap_or(0.0)));
        }
    }
    if run["connected"] == Value::Bool(false) {
        out.push("not every connection streamed".to_owned());
    }
    out
}

fn parse(lines: &str) -> anyhow::Result<Vec<Value>> {
    Ok(lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// One line per failed run: its label and what went wrong.
pub fn failures(lines: &str) -> anyhow::Result<Vec<String>> {
    Ok(parse(lines)?
        .iter()
        .filter_map(|run| {
            let problems = problems(run);
            (!problems.is_empty()).then(|| {
                format!(
                    "FAILED {} ({}): {}",
                    text(run, "label"),
                    target_name(run),
                    problems.join(", ")
                )
            })
        })
        .collect())
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Three decimals: the targets are ratios such as 1.5× and 0.95×, and a
/// run at 1.4954× must not read as one that met 1.5×.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}×", a / b),
        _ => "–".to_owned(),
    }
}

/// Node ÷ bare, each target's server CPU counted against its own clients'
/// CPU over the same window.
///
/// The targets run one after another, and on a shared machine the speed of
/// both CPUs moves between them: the bare loop alone gave 237k and 351k
/// deliveries per CPU-second in two runs of one benchmark. The clients do
/// the same work for both targets when both write each event on its own (at
/// 1,000 × 100 events/s, where pacing does not engage), so their CPU per
/// delivery measures how fast the machine was during each target's window.
/// Not meaningful where one target coalesces writes and the other does not.
fn machine_adjusted(node: Option<&Value>, bare: Option<&Value>) -> String {
    let server_per_client = |run: Option<&Value>| {
        let run = run?;
        let server = field(run, "server_cpu_s")?;
        let client = field(run, "client_cpu_s")?;
        (server > 0.0 && client > 0.0).then(|| client / server)
    };
    ratio(server_per_client(node), server_per_client(bare))
}

/// The node on a cluster of three nats-servers with the topics on all
/// three (`scripts/bench`'s node-cluster target).
const CLUSTER: &str = "node (3 NATS, R3)";
/// The node with a pacing window of 25 ms: what a wider window saves at
/// 100 events/s per client, and what it costs in latency.
const PACED_25: &str = "node (pacing 25 ms)";

/// For each run number of an equal-rate scenario: the targets side by side.
fn headline(scenario: &str, runs: &[&Value]) -> String {
    let mut by_run: BTreeMap<String, BTreeMap<String, &Value>> = BTreeMap::new();
    for run in runs {
        by_run
            .entry(run_number(run))
            .or_default()
            .insert(target_name(run), run);
    }
    // At 1,000 × 1,000 events/s pacing puts several events in a write, which
    // saves the node's clients CPU too: no adjustment there.
    let adjusted = scenario == "latency";
    let mut out = format!(
        "\nHeadline, {scenario}: deliveries per server CPU-second (node: node + NATS) and p99, \
         run by run. \"kept rate\" says whether every target published what was asked; \
         only then is the comparison at equal load.{}\n\n\
         | run | kept rate | node | node (no pacing) | node (pacing 25 ms) | node (3 NATS, R3) | Nchan | Nchan (nodelay) | bare loop | node ÷ bare |{} node ÷ Nchan | \
         node (pacing 25 ms) ÷ Nchan | node (3 NATS, R3) ÷ Nchan | p99 ms node | p99 ms node (no pacing) | p99 ms node (pacing 25 ms) | p99 ms node (3 NATS, R3) | p99 ms Nchan | p99 ms Nchan (nodelay) | p99 ms bare |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|{}---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        if adjusted {
            " \"per client CPU\" counts each target's server CPU against its own clients' \
             CPU in the same window: the clients do the same work for both, so it takes out \
             how fast the machine was while each ran."
        } else {
            ""
        },
        if adjusted {
            " node ÷ bare per client CPU |"
        } else {
            ""
        },
        if adjusted { "---:|" } else { "" },
    );
    for (number, targets) in &by_run {
        let get = |name: &str, f: &str| targets.get(name).and_then(|r| field(r, f));
        let kept = targets
            .values()
            .all(|r| r["kept_rate"].as_bool().unwrap_or(false));
        let per_cpu = "deliveries_per_cpu_s";
        let per_client = if adjusted {
            format!(
                " {} |",
                machine_adjusted(targets.get("node").copied(), targets.get("bare").copied())
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {number} | {} | {} | {} | {} | {} | {} | {} | {} | {} |{per_client} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            if kept { "yes" } else { "**no**" },
            cell(get("node", per_cpu), 0),
            cell(get("node (no pacing)", per_cpu), 0),
            cell(get(PACED_25, per_cpu), 0),
            cell(get(CLUSTER, per_cpu), 0),
            cell(get("nchan", per_cpu), 0),
            cell(get("nchan (nodelay)", per_cpu), 0),
            cell(get("bare", per_cpu), 0),
            ratio(get("node", per_cpu), get("bare", per_cpu)),
            ratio(get("node", per_cpu), get("nchan", per_cpu)),
            ratio(get(PACED_25, per_cpu), get("nchan", per_cpu)),
            ratio(get(CLUSTER, per_cpu), get("nchan", per_cpu)),
            cell(get("node", "p99_ms"), 1),
            cell(get("node (no pacing)", "p99_ms"), 1),
            cell(get(PACED_25, "p99_ms"), 1),
            cell(get(CLUSTER, "p99_ms"), 1),
            cell(get("nchan", "p99_ms"), 1),
            cell(get("nchan (nodelay)", "p99_ms"), 1),
            cell(get("bare", "p99_ms"), 1),
        ));
    }
    out
}

/// Renders the tables for every scenario found in `lines`, one row per run.
pub fn render(lines: &str) -> anyhow::Result<String> {
    let runs = parse(lines)?;
    let mut groups: BTreeMap<(usize, String), Vec<&Value>> = BTreeMap::new();
    for run in &runs {
        let scenario = text(run, "scenario").to_owned();
        let rank = ORDER
            .iter()
            .position(|s| *s == scenario)
            .unwrap_or(ORDER.len());
        groups.entry((rank, scenario)).or_default().push(run);
    }
    let mut out = String::new();
    for ((_, scenario), runs) in &mut groups {
        runs.sort_by_key(|r| (run_number(r), target_name(r)));
        let cols = columns(scenario);
        out.push_str(&format!("\n#### {scenario}\n"));
        if scenario == "latency" || scenario == "fanout" {
            out.push_str(&headline(scenario, runs));
            out.push_str("\nEvery run:\n");
        }
        out.push_str("\n| run | target |");
        for c in &cols {
            out.push_str(&format!(" {} |", c.0));
        }
        out.push_str(" kept rate | sound |\n|---|---|");
        out.push_str(&"---:|".repeat(cols.len()));
        out.push_str("---|---|\n");
        for run in runs.iter() {
            out.push_str(&format!("| {} | {} |", run_number(run), target_name(run)));
            for c in &cols {
                out.push_str(&format!(
                    " {} |",
                    cell(field(run, c.1).map(|v| v * c.3), c.2)
                ));
            }
            let kept = match run["kept_rate"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let problems = problems(run);
            let sound = if problems.is_empty() {
                "yes".to_owned()
            } else {
                format!("**FAILED: {}**", problems.join(", "))
            };
            out.push_str(&format!(" {kept} | {sound} |\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    const LINES: &str = r#"{"scenario":"idle","target":"node","variant":"","label":"idle/node/1","subscribers":10,"rss_per_conn_kib":4.0,"connected_count":10,"lost":0,"dups":0,"gaps":0,"failures":[]}
{"scenario":"idle","target":"node","variant":"","label":"idle/node/2","subscribers":10,"rss_per_conn_kib":6.0,"connected_count":9,"lost":0,"dups":0,"gaps":0,"failures":["9 of 10 connected"]}
{"scenario":"latency","target":"node","variant":"","label":"latency/node/1","kept_rate":true,"deliveries_per_cpu_s":100.0,"server_cpu_s":10.0,"client_cpu_s":8.0,"p99_ms":9.0,"lost":0,"dups":0,"gaps":0}
{"scenario":"latency","target":"node","variant":"3 NATS, R3","label":"latency/node-cluster/1","kept_rate":true,"deliveries_per_cpu_s":80.0,"server_cpu_s":12.5,"client_cpu_s":8.0,"p99_ms":12.0,"lost":0,"dups":0,"gaps":0}
{"scenario":"latency","target":"bare","variant":"","label":"latency/bare/1","kept_rate":true,"deliveries_per_cpu_s":200.0,"server_cpu_s":5.0,"client_cpu_s":5.0,"p99_ms":1.0,"lost":0,"dups":0,"gaps":0}"#;

    #[test]
    fn one_row_per_run_and_failed_runs_stay_in_sight() {
        let table = super::render(LINES).unwrap();
        assert!(
            table.contains("| 1 | node | 10 | – | – | – | 4.00 | – | 10 | 0 | 0 | 0 | – | yes |"),
            "{table}"
        );
        assert!(table.contains("| 2 | node | 10 |"), "{table}");
        assert!(table.contains("**FAILED: 9 of 10 connected**"), "{table}");
    }

    #[test]
    fn headline_pairs_targets_of_a_run() {
        let table = super::render(LINES).unwrap();
        assert!(
            table.contains(
                "| 1 | yes | 100 | – | – | 80 | – | – | 200 | 0.500× | 0.800× | – | – | – | 9.0 | – | – | 12.0 | – | – | 1.0 |"
            ),
            "{table}"
        );
    }

    #[test]
    fn a_slower_machine_during_one_target_is_taken_out_per_client_cpu() {
        // The same server work per client CPU-second: a machine half as fast
        // while the node ran doubles both its server's and its clients' CPU.
        let node: serde_json::Value =
            serde_json::json!({"server_cpu_s": 8.0, "client_cpu_s": 10.0});
        let bare: serde_json::Value = serde_json::json!({"server_cpu_s": 4.0, "client_cpu_s": 5.0});
        assert_eq!(super::machine_adjusted(Some(&node), Some(&bare)), "1.000×");
        assert_eq!(super::machine_adjusted(Some(&node), None), "–");
        let no_clients: serde_json::Value =
            serde_json::json!({"server_cpu_s": 4.0, "client_cpu_s": 0.0});
        assert_eq!(super::machine_adjusted(Some(&node), Some(&no_clients)), "–");
    }

    #[test]
    fn a_ratio_just_under_a_target_does_not_round_up_to_it() {
        assert_eq!(super::ratio(Some(152_287.0), Some(101_835.0)), "1.495×");
        assert_eq!(super::ratio(Some(1.0), None), "–");
    }

    #[test]
    fn check_names_each_failed_run() {
        let failed = super::failures(LINES).unwrap();
        assert_eq!(failed, vec!["FAILED idle/node/2 (node): 9 of 10 connected"]);
        let old_style = r#"{"scenario":"fanout","target":"nchan","label":"x","lost":3,"dups":0,"connected":true}"#;
        assert_eq!(
            super::failures(old_style).unwrap(),
            vec!["FAILED x (nchan): 3 lost"]
        );
    }
}
