//! `ssectl status`: the cluster as admin sees it.
//!
//! Nodes with their connections, events delivered per second and state come
//! from admin's `/v1/nodes`; NATS reachability from admin's `/readyz`;
//! topics with their subscribers from `/v1/topics` (the table shows the
//! [`TOPICS_SHOWN`] with the most, unless `--all`). Nodes report every few
//! seconds, so delivered/s is the change between two reports of the same
//! node, watched for up to `--rate-window`.
//!
//! Exit 3 when admin does not answer, 1 when admin cannot reach NATS.

use std::time::Instant;

use serde_json::{Value, json};
use sse_protocol::node_report::NodeReport;
use time::OffsetDateTime;

use crate::{
    Error,
    args::Status,
    client::Admin,
    commands::topic::replica_state,
    output::{self, Output},
    settings::Settings,
};

/// Topics the table shows, those with the most subscribers: a cluster of
/// thousands of topics would print a line for each.
const TOPICS_SHOWN: usize = 20;

/// How often node reports are read while waiting for a fresh one.
const POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `ssectl status`.
pub async fn run(settings: &Settings, out: Output, status: Status) -> Result<(), Error> {
    let admin = Admin::new(settings)?;
    // Readiness is public: it answers even without a token, and tells
    // whether admin reaches NATS.
    let ready = match admin.get("/readyz").await {
        Ok(ready) => ready,
        // 503 carries the same body: admin is up, NATS is not.
        Err(Error::Refused { status: 503, .. }) => json!({ "nats_connected": false }),
        Err(other) => return Err(other),
    };
    let nats_connected = ready["nats_connected"].as_bool().unwrap_or(false);
    let (nodes, topics, ttl_seconds) = if nats_connected {
        let first = admin.get("/v1/nodes").await?;
        let ttl_seconds = first["ttl_seconds"].as_u64();
        let topics = admin.get("/v1/topics").await?;
        let nodes = with_rates(&admin, first, status.rate_window).await?;
        (nodes, topics, ttl_seconds)
    } else {
        (Vec::new(), json!({ "topics": [], "unavailable": [] }), None)
    };
    let unavailable = topics["unavailable"].clone();
    let topics = topics["topics"].clone();
    if out.json() {
        out.print_json(&json!({
            "admin": admin.base(),
            "nats_connected": nats_connected,
            "nodes": nodes,
            "nats_servers": nats_servers(&topics),
            "topics": topics,
            "unavailable_topics": unavailable,
        }));
    } else {
        crate::outln!(
            "admin {}: NATS {}",
            admin.base(),
            if nats_connected {
                "connected"
            } else {
                "UNREACHABLE"
            }
        );
        let servers = nats_servers(&topics);
        if let Some(servers) = servers.as_object().filter(|s| !s.is_empty()) {
            let said: Vec<String> = servers
                .iter()
                .map(|(name, state)| format!("{name} {}", state.as_str().unwrap_or("?")))
                .collect();
            crate::outln!("NATS servers holding topics: {}", said.join(", "));
        }
        crate::outln!();
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                vec![
                    output::cell(&n["id"]),
                    output::cell(&n["address"]),
                    state_cell(n),
                    output::cell(&n["connections"]),
                    match n["delivered_per_second"].as_f64() {
                        Some(rate) => format!("{rate:.1}"),
                        None => "-".to_owned(),
                    },
                    output::cell(&n["version"]),
                ]
            })
            .collect();
        output::print_table(
            &[
                "NODE",
                "ADDRESS",
                "STATE",
                "CONNECTIONS",
                "DELIVERED/S",
                "VERSION",
            ],
            &rows,
        );
        if let (true, Some(ttl)) = (nodes.is_empty(), ttl_seconds) {
            crate::outln!(
                "no node has reported in the last {ttl} s: none is up, or none can write its report to NATS"
            );
        }
        crate::outln!();
        let mut listed: Vec<&Value> = topics
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .collect();
        // The busiest first; by name among equals, as admin lists them.
        listed.sort_by_key(|t| std::cmp::Reverse(t["subscribers"].as_u64().unwrap_or(0)));
        let left_out = if status.all {
            0
        } else {
            listed.len().saturating_sub(TOPICS_SHOWN)
        };
        listed.truncate(listed.len() - left_out);
        let rows: Vec<Vec<String>> = listed
            .iter()
            .map(|t| {
                vec![
                    output::cell(&t["name"]),
                    output::cell(&t["subscribers"]),
                    output::cell(&t["messages"]),
                    output::cell(&t["last_sequence"]),
                    crate::commands::topic::placement_cell(t),
                ]
            })
            .collect();
        output::print_table(
            &["TOPIC", "SUBSCRIBERS", "MESSAGES", "LAST SEQ", "PLACEMENT"],
            &rows,
        );
        if left_out > 0 {
            crate::outln!(
                "and {left_out} more topics, none with more subscribers than those shown (`ssectl status --all` lists every topic; `ssectl topic ls` too)"
            );
        }
        if let Some(note) = crate::commands::topic::unavailable_note(&unavailable) {
            crate::outln!("{note}");
        }
    }
    if !nats_connected {
        return Err(Error::Failed("admin cannot reach NATS".to_owned()));
    }
    Ok(())
}

/// Every NATS server the topics' placements name, by name: `up` (it leads
/// a stream, or is current in one), or the worst any stream's leader says
/// of it ([`replica_state`]).
fn nats_servers(topics: &Value) -> Value {
    let mut servers = serde_json::Map::new();
    let rank = |state: &str| match state {
        "up" => 0,
        "behind" => 1,
        "unreachable" => 2,
        _ => 3,
    };
    let mut note = |name: &str, state: &str| {
        let worse = servers
            .get(name)
            .and_then(Value::as_str)
            .is_none_or(|old| rank(state) > rank(old));
        if worse {
            servers.insert(name.to_owned(), json!(state));
        }
    };
    for topic in topics.as_array().map(Vec::as_slice).unwrap_or_default() {
        let placement = &topic["placement"];
        if let Some(leader) = placement["leader"].as_str() {
            note(leader, "up");
        }
        for replica in placement["replicas"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            note(
                replica["server"].as_str().unwrap_or("?"),
                replica_state(replica),
            );
        }
    }
    Value::Object(servers)
}

/// Each node of `first` with `state` and, when a newer report came within
/// `window`, `delivered_per_second`.
async fn with_rates(
    admin: &Admin,
    first: Value,
    window: std::time::Duration,
) -> Result<Vec<Value>, Error> {
    let mut nodes: Vec<Value> = first["nodes"].as_array().cloned().unwrap_or_default();
    for node in &mut nodes {
        let state = if node["draining"].as_bool() == Some(true) {
            "draining"
        } else {
            "serving"
        };
        node["state"] = json!(state);
        node["delivered_per_second"] = Value::Null;
    }
    let first_asked = Instant::now();
    let mut newest: Vec<Option<ReportAge>> =
        nodes.iter().map(|n| report_age(n, first_asked)).collect();
    let started = Instant::now();
    // The view as last seen: a node that began to drain, or shut down
    // (which deletes its entry), while the rates were taken is shown so.
    let mut last_seen: Option<Value> = None;
    while !nodes.is_empty() && started.elapsed() < window {
        if nodes.iter().all(|n| !n["delivered_per_second"].is_null()) {
            break;
        }
        tokio::time::sleep(POLL).await;
        let later = last_seen.insert(admin.get("/v1/nodes").await?);
        let asked = Instant::now();
        for (node, newest) in nodes.iter_mut().zip(&mut newest) {
            if !node["delivered_per_second"].is_null() {
                continue;
            }
            let Some(newer) = later["nodes"]
                .as_array()
                .and_then(|list| list.iter().find(|n| n["id"] == node["id"]))
            else {
                continue;
            };
            if let Some(age) = report_age(newer, asked) {
                *newest = Some(age);
            }
            if let Some(rate) = rate(node, newer) {
                node["delivered_per_second"] = json!(rate);
            }
        }
    }
    if let Some(last) = &last_seen {
        for node in &mut nodes {
            let now = last["nodes"]
                .as_array()
                .and_then(|list| list.iter().find(|n| n["id"] == node["id"]));
            match now {
                None => node["state"] = json!("stopped"),
                Some(now) if now["draining"].as_bool() == Some(true) => {
                    node["state"] = json!("draining");
                }
                Some(_) => {}
            }
        }
    }
    for (node, newest) in nodes.iter_mut().zip(newest) {
        let age = newest.map(|seen| seen.seconds + seen.asked.elapsed().as_secs_f64());
        if let Some(seconds) = silent_seconds(node, age) {
            node["state"] = json!("silent");
            node["silent_seconds"] = json!(seconds);
        }
    }
    Ok(nodes)
}

/// A node's state, with its clock's skew from NATS's when that is a
/// second or more: such a node judges tokens by NATS's clock, and its
/// operator should set its clock right.
fn state_cell(node: &Value) -> String {
    let state = match node["silent_seconds"].as_u64() {
        Some(seconds) => format!("silent {seconds}s"),
        None => output::cell(&node["state"]),
    };
    match node["clock_skew_seconds"].as_f64() {
        Some(skew) if skew.abs() >= 1.0 => format!("{state} (clock {skew:+.0}s)"),
        _ => state,
    }
}

/// How old a node's latest report was when admin was asked, and when
/// that was.
#[derive(Debug, Clone, Copy)]
struct ReportAge {
    seconds: f64,
    asked: Instant,
}

/// The age of `node`'s report as admin gave it at `asked`: by NATS's clock
/// (`report_age_seconds`); from an admin that does not say, by this
/// machine's clock against the node's `reported_at`.
fn report_age(node: &Value, asked: Instant) -> Option<ReportAge> {
    let seconds = match node["report_age_seconds"].as_f64() {
        Some(seconds) => seconds,
        None => OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9 - reported_at(node)?,
    };
    Some(ReportAge { seconds, asked })
}

/// Seconds since `node` last reported (`age`), when that is longer than
/// its report interval allows ([`NodeReport::silent_after`]): a node
/// killed outright, or cut off from NATS, which the cluster view keeps
/// until its entry's TTL runs out.
fn silent_seconds(node: &Value, age: Option<f64>) -> Option<u64> {
    let report: NodeReport = serde_json::from_value(node.clone()).ok()?;
    let age = age?;
    (age > report.silent_after()?.as_secs_f64()).then(|| age.floor() as u64)
}

/// When `node`'s report was written, in seconds since the epoch.
fn reported_at(node: &Value) -> Option<f64> {
    node["reported_at"].as_str().and_then(parse_rfc3339_seconds)
}

/// Events per second between two reports of one node; `None` while the
/// report has not changed.
fn rate(old: &Value, new: &Value) -> Option<f64> {
    let (t0, t1) = (reported_at(old)?, reported_at(new)?);
    if t1 <= t0 {
        return None;
    }
    let d0 = old["events_delivered"].as_u64()?;
    let d1 = new["events_delivered"].as_u64()?;
    Some(d1.saturating_sub(d0) as f64 / (t1 - t0))
}

/// Seconds since the epoch of an RFC 3339 time, as nodes write it.
fn parse_rfc3339_seconds(text: &str) -> Option<f64> {
    let at = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(at.unix_timestamp_nanos() as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_reports() {
        assert_eq!(
            parse_rfc3339_seconds("1970-01-02T00:00:01Z"),
            Some(86_401.0)
        );
        let old = json!({"reported_at": "2026-12-01T10:00:00Z", "events_delivered": 100});
        let new = json!({"reported_at": "2026-12-01T10:00:05Z", "events_delivered": 600});
        assert_eq!(rate(&old, &new), Some(100.0));
        assert_eq!(rate(&old, &old), None);
    }

    #[test]
    fn a_node_two_reports_late_is_silent() {
        let node = |report_seconds: u64| {
            json!({"id": "n1", "address": "127.0.0.1:1", "version": "0.1.0",
                "started_at": "2026-12-01T09:00:00Z", "reported_at": "2026-12-01T10:00:00Z",
                "connections": 0, "events_delivered": 0, "draining": false,
                "report_seconds": report_seconds})
        };
        // Reports every 5 s: silent once 11 s pass without one.
        assert_eq!(silent_seconds(&node(5), Some(11.0)), None);
        assert_eq!(silent_seconds(&node(5), Some(12.5)), Some(12));
        // A node that does not say how often it reports is never judged.
        assert_eq!(silent_seconds(&node(0), Some(600.0)), None);
        assert_eq!(silent_seconds(&node(5), None), None);
    }

    /// A report's age is the one admin gives by NATS's clock, whatever the
    /// node wrote as its time; the node's time counts only where admin
    /// does not say.
    #[test]
    fn a_reports_age_is_natss_and_a_skewed_clock_shows() {
        let asked = Instant::now();
        let ahead = json!({"reported_at": "2999-01-01T00:00:00Z", "report_age_seconds": 2.5,
            "clock_skew_seconds": 180.2, "state": "serving"});
        assert_eq!(report_age(&ahead, asked).unwrap().seconds, 2.5);
        assert_eq!(state_cell(&ahead), "serving (clock +180s)");
        let old_admin = json!({"reported_at": "2000-01-01T00:00:00Z", "state": "serving"});
        assert!(report_age(&old_admin, asked).unwrap().seconds > 8.0e8);
        assert_eq!(state_cell(&old_admin), "serving");
        let close = json!({"clock_skew_seconds": -0.4, "state": "draining"});
        assert_eq!(state_cell(&close), "draining");
        let behind = json!({"clock_skew_seconds": -3.0, "silent_seconds": 12, "state": "silent"});
        assert_eq!(state_cell(&behind), "silent 12s (clock -3s)");
    }

    #[test]
    fn placements_say_where_topics_live_and_which_servers_ail() {
        use crate::commands::topic::placement_cell;
        let lagging = |server: &str, current: bool, offline: bool, seen_ms: u64, lag: u64| json!({"server": server, "current": current, "offline": offline, "last_seen_ms": seen_ms, "lag": lag});
        let follower = |server: &str, current: bool, offline: bool, seen_ms: u64| {
            lagging(server, current, offline, seen_ms, 5_000)
        };
        let healthy = json!({"placement": {"leader": "n0", "replicas": [follower("n1", true, false, 100), follower("n2", true, false, 90)]}});
        let ailing = json!({"placement": {"leader": "n1", "replicas": [follower("n0", false, false, 1500), follower("n2", false, false, 65_000)]}});
        let gone =
            json!({"placement": {"leader": "n1", "replicas": [follower("n2", false, true, 0)]}});
        assert_eq!(placement_cell(&json!({})), "-");
        assert_eq!(
            placement_cell(&json!({"placement": {"leader": null, "replicas": []}})),
            "no leader"
        );
        assert_eq!(
            placement_cell(&json!({"placement": {"leader": "n0", "replicas": []}})),
            "n0"
        );
        assert_eq!(placement_cell(&healthy), "n0 leads, 2 current");
        assert_eq!(
            placement_cell(&ailing),
            "n1 leads, n0 behind, n2 unreachable for 65s"
        );
        assert_eq!(placement_cell(&gone), "n1 leads, n2 offline");
        // A follower of a busy stream an operation behind, heard from
        // 24 ms ago, keeps step; one far behind, or heard from 3 s ago,
        // does not.
        let busy = |lag: u64, seen_ms: u64| json!({"placement": {"leader": "n0", "replicas": [lagging("n1", false, false, seen_ms, lag)]}});
        assert_eq!(placement_cell(&busy(1, 24)), "n0 leads, 1 current");
        assert_eq!(placement_cell(&busy(101, 24)), "n0 leads, n1 behind");
        assert_eq!(placement_cell(&busy(1, 3_000)), "n0 leads, n1 behind");
        // A leader elected since the follower went away has never heard it.
        let never =
            json!({"placement": {"leader": "n2", "replicas": [follower("n0", false, false, 0)]}});
        assert_eq!(placement_cell(&never), "n2 leads, n0 unreachable");
        // A server is as bad as the worst any leader says of it.
        assert_eq!(
            nats_servers(&json!([healthy, ailing])),
            json!({"n0": "behind", "n1": "up", "n2": "unreachable"})
        );
        assert_eq!(nats_servers(&json!([ailing, gone]))["n2"], "offline");
    }
}
