//! `ssectl topic create|update|ls|info|purge|rm`, over admin's `/v1/topics`.

use std::io::{BufRead, IsTerminal, Write};

use reqwest::Method;
use serde_json::{Map, Value, json};
use sse_protocol::TopicName;

use crate::{
    Error,
    args::{TopicCommand, TopicCreate, TopicLimits, TopicUpdate},
    client::Admin,
    output::{self, Output},
    settings::Settings,
};

/// Runs one topic command.
pub async fn run(settings: &Settings, out: Output, command: TopicCommand) -> Result<(), Error> {
    let admin = Admin::new(settings)?;
    match command {
        TopicCommand::Create(create) => {
            let mut topic = admin
                .call(Method::POST, "/v1/topics", Some(&create_body(&create)?))
                .await?;
            // A stream just made has no leader yet, or one that has not
            // heard from its followers: shown at once, its placement would
            // say `-` or `n1 unreachable` of a healthy cluster. Looked at
            // again for a few seconds; what is still unsettled then is shown
            // as it is.
            let deadline = std::time::Instant::now() + PLACEMENT_SETTLE;
            while !placement_settled(&topic) && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let name = topic["name"].as_str().unwrap_or_default();
                match admin.get(&format!("/v1/topics/{name}")).await {
                    Ok(again) => topic = again,
                    Err(_) => break,
                }
            }
            print_topic(out, &topic);
        }
        TopicCommand::Update(update) => {
            let name = topic_name(&update.name)?;
            let topic = admin
                .call(
                    Method::PATCH,
                    &format!("/v1/topics/{name}"),
                    Some(&update_body(&update)?),
                )
                .await?;
            print_topic(out, &topic);
        }
        TopicCommand::Ls => {
            let list = admin.get("/v1/topics").await?;
            if out.json() {
                out.print_json(&list);
            } else {
                print_list(&list);
            }
        }
        TopicCommand::Info { name } => {
            let name = topic_name(&name)?;
            let topic = admin.get(&format!("/v1/topics/{name}")).await?;
            print_topic(out, &topic);
        }
        TopicCommand::Purge { name, subject, yes } => {
            let name = topic_name(&name)?;
            let what = match &subject {
                Some(subject) => format!("purge the events of {subject:?} in topic {name}"),
                None => format!("purge every event of topic {name}"),
            };
            confirm(&what, yes)?;
            let body = match subject {
                Some(subject) => json!({ "subject": subject }),
                None => json!({}),
            };
            let purged = admin
                .call(
                    Method::POST,
                    &format!("/v1/topics/{name}/purge"),
                    Some(&body),
                )
                .await?;
            if out.json() {
                out.print_json(&purged);
            } else {
                crate::outln!(
                    "purged {} events from {name}",
                    output::cell(&purged["purged"])
                );
            }
        }
        TopicCommand::Rm { name, yes } => {
            let name = topic_name(&name)?;
            confirm(&format!("remove topic {name} and all its events"), yes)?;
            admin
                .call(Method::DELETE, &format!("/v1/topics/{name}"), None)
                .await?;
            if out.json() {
                out.print_json(&json!({ "removed": name.as_str() }));
            } else {
                crate::outln!("removed topic {name}");
            }
        }
    }
    Ok(())
}

/// A topic name checked here, so that it is safe in a URL path.
pub fn topic_name(name: &str) -> Result<TopicName, Error> {
    TopicName::parse(name).map_err(|e| Error::Usage(format!("{name:?}: {e}")))
}

fn create_body(create: &TopicCreate) -> Result<Value, Error> {
    let name = topic_name(&create.name)?;
    let mut body = Map::new();
    body.insert("name".into(), json!(name.as_str()));
    if let Some(replicas) = create.replicas {
        body.insert("replicas".into(), json!(replicas));
    }
    insert_limits(&mut body, &create.limits);
    if create.memory {
        body.insert("storage".into(), json!("memory"));
    }
    if create.private {
        body.insert("access".into(), json!("private"));
    }
    Ok(Value::Object(body))
}

/// The `PATCH` body: only what was given, and something must be.
fn update_body(update: &TopicUpdate) -> Result<Value, Error> {
    let mut body = Map::new();
    insert_limits(&mut body, &update.limits);
    if update.private {
        body.insert("access".into(), json!("private"));
    } else if update.public {
        body.insert("access".into(), json!("public"));
    }
    if body.is_empty() {
        return Err(Error::Usage(
            "nothing to change: give at least one of --max-age, --max-bytes, --max-messages, \
             --max-messages-per-subject, --max-message-bytes, --max-consumers, --private, --public"
                .to_owned(),
        ));
    }
    Ok(Value::Object(body))
}

fn insert_limits(body: &mut Map<String, Value>, limits: &TopicLimits) {
    if let Some(age) = limits.max_age {
        body.insert("max_age_seconds".into(), json!(age.as_secs()));
    }
    if let Some(bytes) = limits.max_bytes {
        body.insert("max_bytes".into(), json!(bytes));
    }
    if let Some(messages) = limits.max_messages {
        body.insert("max_messages".into(), json!(messages));
    }
    if let Some(messages) = limits.max_messages_per_subject {
        body.insert("max_messages_per_subject".into(), json!(messages));
    }
    if let Some(bytes) = limits.max_message_bytes {
        body.insert("max_message_bytes".into(), json!(bytes));
    }
    if let Some(consumers) = limits.max_consumers {
        body.insert("max_consumers".into(), json!(consumers));
    }
}

/// Asks on a terminal; without one, refuses unless `--yes` was given.
fn confirm(what: &str, yes: bool) -> Result<(), Error> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() || !std::io::stderr().is_terminal() {
        return Err(Error::Usage(format!(
            "refusing to {what} without --yes: there is no terminal to ask on"
        )));
    }
    eprint!("{what}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::Failed(format!("cannot read the answer: {e}")))?;
    match answer.trim() {
        "y" | "Y" | "yes" | "YES" | "Yes" => Ok(()),
        _ => Err(Error::Failed(format!("not confirmed; did not {what}"))),
    }
}

fn print_topic(out: Output, topic: &Value) {
    if out.json() {
        out.print_json(topic);
        return;
    }
    let s = &topic["settings"];
    let limit = |v: &Value| match v.as_u64() {
        Some(0) => "unlimited".to_owned(),
        _ => output::cell(v),
    };
    output::print_pairs(&[
        ("name", output::cell(&topic["name"])),
        ("access", output::cell(&s["access"])),
        ("replicas", output::cell(&s["replicas"])),
        ("storage", output::cell(&s["storage"])),
        (
            "max age",
            output::age(s["max_age_seconds"].as_u64().unwrap_or(0)),
        ),
        (
            "max bytes",
            match s["max_bytes"].as_u64() {
                Some(0) | None => "unlimited".to_owned(),
                Some(n) => output::bytes(n),
            },
        ),
        ("max messages", limit(&s["max_messages"])),
        (
            "max messages per path",
            limit(&s["max_messages_per_subject"]),
        ),
        (
            "max event size",
            match s["max_message_bytes"].as_u64() {
                Some(0) | None => "the NATS server's max_payload".to_owned(),
                // NATS counts an event's headers against it, as against
                // max_payload: the data may take somewhat less.
                Some(n) => format!("{}, headers included", output::bytes(n)),
            },
        ),
        (
            "max consumers",
            match s["max_consumers"].as_u64() {
                Some(0) | None => "the NATS server's default".to_owned(),
                Some(n) => n.to_string(),
            },
        ),
        ("messages", output::cell(&topic["messages"])),
        ("bytes", output::bytes(topic["bytes"].as_u64().unwrap_or(0))),
        (
            "sequences",
            format!(
                "{}..{}",
                output::cell(&topic["first_sequence"]),
                output::cell(&topic["last_sequence"])
            ),
        ),
        ("subject paths", output::cell(&topic["subject_paths"])),
        ("subscribers", output::cell(&topic["subscribers"])),
        ("placement", placement_cell(topic)),
        ("epoch", output::cell(&topic["epoch"])),
        ("created", output::cell(&topic["created"])),
        ("stream", output::cell(&topic["stream"])),
    ]);
}

/// Where a topic's stream lives, in a few words: its leader, and each
/// other replica that is not up to date (`n0 leads, n2 offline`), or how
/// many are (`n0 leads, 2 current`); `no leader` while there is none.
pub(crate) fn placement_cell(topic: &Value) -> String {
    let placement = &topic["placement"];
    if placement.is_null() {
        return "-".to_owned();
    }
    let Some(leader) = placement["leader"].as_str() else {
        return "no leader".to_owned();
    };
    let replicas = placement["replicas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if replicas.is_empty() {
        return leader.to_owned();
    }
    let troubled: Vec<String> = replicas
        .iter()
        .filter_map(|r| {
            let server = r["server"].as_str().unwrap_or("?");
            match replica_state(r) {
                "up" => None,
                "unreachable" => Some(match r["last_seen_ms"].as_u64().unwrap_or(0) {
                    0 => format!("{server} unreachable"),
                    ms => format!("{server} unreachable for {}", output::age(ms / 1000)),
                }),
                state => Some(format!("{server} {state}")),
            }
        })
        .collect();
    let current = replicas.len() - troubled.len();
    let mut cell = format!("{leader} leads");
    if current > 0 {
        cell.push_str(&format!(", {current} current"));
    }
    for trouble in troubled {
        cell.push_str(", ");
        cell.push_str(&trouble);
    }
    cell
}

/// Longest wait after `topic create` for the new stream's leader and
/// replicas to be in place.
const PLACEMENT_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether a topic's stream has a leader and every replica is current.
fn placement_settled(topic: &Value) -> bool {
    let placement = &topic["placement"];
    placement["leader"].is_string()
        && placement["replicas"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .all(|r| replica_state(r) == "up")
}

/// A follower more than this long unheard of is unreachable, not behind.
const UNREACHABLE_AFTER_MS: u64 = 5_000;
/// A follower heard from within this long, and at most [`IN_STEP_LAG`]
/// operations behind, keeps step: on a busy stream every follower is an
/// operation or two behind at any instant, which is no trouble.
const IN_STEP_MS: u64 = 2_000;
/// See [`IN_STEP_MS`].
const IN_STEP_LAG: u64 = 100;

/// What a stream's leader says of a follower (an element of
/// `placement.replicas`): `up` (current, or keeping step: [`IN_STEP_MS`]),
/// `behind` (heard from lately, catching up), `unreachable` (not heard from
/// for seconds, or never since this leader was elected: NATS then says 0)
/// or `offline` (known down), from best to worst.
pub(crate) fn replica_state(replica: &Value) -> &'static str {
    let last_seen_ms = replica["last_seen_ms"].as_u64().unwrap_or(0);
    let in_step = (1..IN_STEP_MS).contains(&last_seen_ms)
        && replica["lag"].as_u64().unwrap_or(u64::MAX) <= IN_STEP_LAG;
    if replica["offline"].as_bool().unwrap_or(false) {
        "offline"
    } else if replica["current"].as_bool().unwrap_or(false) || in_step {
        "up"
    } else if last_seen_ms == 0 || last_seen_ms >= UNREACHABLE_AFTER_MS {
        "unreachable"
    } else {
        "behind"
    }
}

/// What to say of the topics a listing names as `unavailable`, if any.
pub(crate) fn unavailable_note(unavailable: &Value) -> Option<String> {
    let names: Vec<&str> = unavailable
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    (!names.is_empty()).then(|| {
        format!(
            "not shown: {} (their streams did not answer: NATS servers down, or no leader)",
            names.join(", ")
        )
    })
}

fn print_list(list: &Value) {
    let rows: Vec<Vec<String>> = list["topics"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            vec![
                output::cell(&t["name"]),
                output::cell(&t["settings"]["access"]),
                output::cell(&t["settings"]["replicas"]),
                output::cell(&t["messages"]),
                output::bytes(t["bytes"].as_u64().unwrap_or(0)),
                output::cell(&t["last_sequence"]),
                output::cell(&t["subscribers"]),
                placement_cell(t),
            ]
        })
        .collect();
    output::print_table(
        &[
            "NAME",
            "ACCESS",
            "REPLICAS",
            "MESSAGES",
            "BYTES",
            "LAST SEQ",
            "SUBSCRIBERS",
            "PLACEMENT",
        ],
        &rows,
    );
    if let Some(note) = unavailable_note(&list["unavailable"]) {
        crate::errln!("{note}");
    }
}
