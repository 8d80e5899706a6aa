//! `ssectl tail`: read a stream the way a browser does, and resume the same
//! way.
//!
//! It sends `GET /v1/events?topic=…` to the first stream URL, keeps the last
//! event id the stream committed (id-only frames included), and when the
//! stream drops (the node died, drained, or closed it) says so on stderr and
//! reconnects with that id as `Last-Event-ID`, trying the next URL in the
//! list. The node then sends exactly what was missed. `reset` events (history
//! that is gone) are printed as notices, not counted as events.
//!
//! `--from-start` and `--last N` need no special support from the node: the
//! epoch and sequences come from admin's topic info, and the cursor
//! `<topic>:<epoch>:<seq>` built from them is sent as a plain resume.
//!
//! A node that hangs keeps the connection open and sends nothing, not even
//! its heartbeats: after `--silence-timeout` the tail drops it and resumes
//! elsewhere, as a load balancer's idle timeout does for browsers.
//!
//! A topic deleted while it is tailed (`topic_deleted`) is left out of the
//! resume, and the tail goes on with its other topics; with none left it
//! ends with exit 1.
//!
//! A refusal (4xx) ends the tail with exit 1. Before any node has answered,
//! a round of the URLs that reaches none ends it with exit 3; once the tail
//! has run, it keeps trying until `--give-up-after` passes without a node.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use sse_protocol::{Cursor, SubjectPath};

use crate::{
    Error,
    args::Tail,
    client::{Admin, http_client, refusal},
    commands::topic::topic_name,
    output::Output,
    settings::Settings,
    sse::{Event, Item, Reader},
};

/// Pause before the first reconnect; doubled on each failure in a row.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between reconnects.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Shortest `--silence-timeout`: a node's heartbeats are at least a second
/// apart, and a shorter wait would only reconnect again and again.
const MIN_SILENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How a stream attempt ended, when it did not end the tail.
enum Ended {
    /// The stream was open and then dropped.
    Dropped(String),
    /// No stream opened: nothing answered, or a node said "not now"
    /// (its refusal, for the exit code when the tail gives up).
    NotOpened(String, Option<Error>),
}

/// Runs `ssectl tail`.
pub async fn run(settings: &Settings, out: Output, tail: Tail) -> Result<(), Error> {
    if tail.silence_timeout < MIN_SILENCE_TIMEOUT {
        return Err(Error::Usage(format!(
            "--silence-timeout must be longer than the nodes' heartbeat (15 s by default, at least 1 s), not {:?}: at least 2s",
            tail.silence_timeout
        )));
    }
    for path in &tail.paths {
        SubjectPath::parse_pattern(path)
            .map_err(|e| Error::Usage(format!("subject path {path:?}: {e}")))?;
    }
    let mut last_id = match (&tail.from, tail.from_start, tail.last) {
        (Some(id), _, _) => {
            Cursor::parse(id).map_err(|e| Error::Usage(format!("--from: {e}")))?;
            id.clone()
        }
        (None, true, _) => start_cursor(settings, &tail.paths, None).await?,
        (None, false, Some(n)) => start_cursor(settings, &tail.paths, Some(n)).await?,
        (None, false, None) => String::new(),
    };
    if tail.count == Some(0) {
        return Ok(());
    }
    let http = http_client(None, &settings.trusted)?;
    let urls = &settings.stream_urls;
    let mut paths = tail.paths.clone();
    let mut next_url = 0usize;
    let mut printed: u64 = 0;
    let mut connected_once = false;
    let mut failures_in_a_row: u32 = 0;
    let mut down_since: Option<Instant> = None;
    let mut resuming = false;
    loop {
        let base = &urls[next_url % urls.len()];
        next_url += 1;
        let attempt = read_once(
            &http,
            base,
            &tail,
            &mut paths,
            &mut last_id,
            resuming,
            out,
            &mut printed,
        )
        .await;
        let ended = match attempt {
            Ok(None) => return Ok(()),
            Ok(Some(ended)) => ended,
            Err(error) => return Err(error),
        };
        match &ended {
            Ended::Dropped(why) => {
                connected_once = true;
                failures_in_a_row = 0;
                down_since = None;
                let from = if last_id.is_empty() { "now" } else { &last_id };
                crate::errln!("ssectl: stream from {base} dropped ({why}); resuming from {from}");
                resuming = true;
                // A node that closes every stream at once must not be
                // hammered: at most a few reconnects a second.
                tokio::time::sleep(FIRST_PAUSE).await;
            }
            Ended::NotOpened(why, refusal) => {
                failures_in_a_row += 1;
                let since = *down_since.get_or_insert_with(Instant::now);
                let tried_all = failures_in_a_row as usize >= urls.len();
                // A node that answered with a refusal was reached: exit 1
                // with its code, as any other command refused (3 is for
                // nothing reachable).
                if !connected_once && tried_all {
                    return Err(refusal.clone().unwrap_or_else(|| {
                        Error::Unreachable(format!("no stream could be opened: {why}"))
                    }));
                }
                if since.elapsed() >= tail.give_up_after {
                    return Err(match refusal {
                        Some(Error::Refused {
                            status,
                            code,
                            message,
                        }) => Error::Refused {
                            status: *status,
                            code: code.clone(),
                            message: format!(
                                "{message} (no stream opened for {:?})",
                                tail.give_up_after
                            ),
                        },
                        _ => Error::Unreachable(format!(
                            "no node answered for {:?}: {why}",
                            tail.give_up_after
                        )),
                    });
                }
                crate::errln!("ssectl: {why}; trying again");
                let pause = FIRST_PAUSE
                    .saturating_mul(1 << failures_in_a_row.min(5))
                    .min(MAX_PAUSE);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// One connection over `paths`: `Ok(None)` when the tail is done (`-n`
/// reached or stdout closed), `Ok(Some(_))` when it should go on elsewhere.
/// A topic deleted meanwhile leaves `paths` and `last_id`.
#[allow(clippy::too_many_arguments)]
async fn read_once(
    http: &reqwest::Client,
    base: &str,
    tail: &Tail,
    paths: &mut Vec<String>,
    last_id: &mut String,
    resuming: bool,
    out: Output,
    printed: &mut u64,
) -> Result<Option<Ended>, Error> {
    let mut url = reqwest::Url::parse(&format!("{base}/v1/events"))
        .map_err(|e| Error::Usage(format!("{base}: {e}")))?;
    for path in paths.iter() {
        url.query_pairs_mut().append_pair("topic", path);
    }
    let mut request = http.get(url).header(header::ACCEPT, "text/event-stream");
    if !last_id.is_empty() {
        request = request.header("Last-Event-ID", last_id.as_str());
    }
    if let Some(token) = &tail.token {
        request = request.bearer_auth(token);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            let why = crate::client::transport_failure("node", base, &error);
            return Ok(Some(Ended::NotOpened(why, None)));
        }
    };
    let status = response.status();
    if status != StatusCode::OK {
        let body = response.bytes().await.unwrap_or_default();
        let refused = refusal(status, &body);
        // Full, draining, or a load balancer without a node: another node
        // (or the same one, later) may take the stream.
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
        ) {
            let why = format!("node at {base}: {refused}");
            // A 502 or 504 is a load balancer's without a node behind it.
            let refusal = (status == StatusCode::SERVICE_UNAVAILABLE).then_some(refused);
            return Ok(Some(Ended::NotOpened(why, refusal)));
        }
        return Err(refused);
    }
    if resuming {
        crate::errln!("ssectl: resumed on {base}");
    }
    let mut reader = Reader::starting_at(last_id);
    let mut deleted = Vec::new();
    let mut body = response.bytes_stream();
    let why = loop {
        let Ok(next) = tokio::time::timeout(tail.silence_timeout, body.next()).await else {
            break format!(
                "nothing from it for {:?}, not even a heartbeat",
                tail.silence_timeout
            );
        };
        match next {
            Some(Ok(chunk)) => {
                let items = reader
                    .feed(&chunk)
                    .map_err(|e| Error::Failed(format!("node at {base} sent a bad stream: {e}")))?;
                for item in items {
                    let Item::Event(event) = item else { continue };
                    print_event(out, &event);
                    if event.event == "topic_deleted"
                        && let Some(topic) = leave_out_deleted(&event.data, paths)?
                    {
                        deleted.push(topic);
                    }
                    if event.event != "reset" && event.event != "topic_deleted" {
                        *printed += 1;
                        if tail.count.is_some_and(|n| *printed >= n) {
                            return Ok(None);
                        }
                    }
                }
                *last_id = without_topics(reader.last_event_id(), &deleted);
            }
            Some(Err(error)) => break format!("read failed: {error}"),
            None => break "the node closed it".to_owned(),
        }
    };
    *last_id = without_topics(reader.last_event_id(), &deleted);
    Ok(Some(Ended::Dropped(why)))
}

/// Leaves the topic a `topic_deleted` event names out of `paths`, and
/// returns it, so that the resume asks for the others only (the node
/// answers a resume naming a deleted topic with 404); an error when none is
/// left.
fn leave_out_deleted(data: &str, paths: &mut Vec<String>) -> Result<Option<String>, Error> {
    let Some(topic) = serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|v| v["topic"].as_str().map(str::to_owned))
    else {
        return Ok(None);
    };
    paths.retain(|path| path.split('.').next() != Some(topic.as_str()));
    if paths.is_empty() {
        return Err(Error::Failed(format!(
            "topic {topic} was deleted, and the tail read nothing else"
        )));
    }
    crate::errln!(
        "ssectl: topic {topic} was deleted; going on with {}",
        paths.join(" ")
    );
    Ok(Some(topic))
}

/// `cursor` (`<topic>:<epoch>:<seq>` joined with `,`) without the positions
/// of `topics`.
fn without_topics(cursor: &str, topics: &[String]) -> String {
    if topics.is_empty() {
        return cursor.to_owned();
    }
    cursor
        .split(',')
        .filter(|position| {
            let topic = position.split(':').next().unwrap_or_default();
            !position.is_empty() && !topics.iter().any(|deleted| deleted == topic)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints one event (a stdout that fails ends the process:
/// [`crate::output::stdout_failed`]).
fn print_event(out: Output, event: &Event) {
    let text = if out.json() {
        json!({ "id": event.id, "event": event.event, "data": event.data }).to_string()
    } else if event.event == "reset" {
        describe_reset(&event.data)
    } else if event.event == "topic_deleted" {
        let topic = serde_json::from_str::<Value>(&event.data)
            .ok()
            .and_then(|v| v["topic"].as_str().map(str::to_owned))
            .unwrap_or_else(|| event.data.clone());
        format!("!! topic {topic} was deleted")
    } else {
        let data = event.data.replace('\n', "\n    ");
        format!("{}  {}  {data}", event.id, event.event)
    };
    if out.json() {
        crate::outln!("{text}");
    } else {
        crate::outln!("{}", printable(&text));
    }
}

/// `text` with what a terminal would act on rather than show written out
/// as `\u{…}`: control characters but line feeds and tabs (an escape
/// sequence recolours or retitles the operator's terminal, a carriage
/// return overwrites the line) and the bidirectional overrides that make
/// text read otherwise than it is. Any publisher can put them in an
/// event's data.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let acted_on = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.contains(acted_on) {
        return text.into();
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acted_on(c) {
            shown.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    shown.into()
}

/// A `reset` event as a notice people cannot miss.
fn describe_reset(data: &str) -> String {
    let Ok(reset) = serde_json::from_str::<Value>(data) else {
        return format!("!! reset: {data}");
    };
    let topic = reset["topic"].as_str().unwrap_or("?");
    match reset["reason"].as_str() {
        Some("history_gone") => format!(
            "!! reset: topic {topic}: events {}..{} are gone (expired or purged); continuing from {}",
            reset["lost_from"], reset["lost_to"], reset["resume_from"]
        ),
        Some("stream_recreated") => format!(
            "!! reset: topic {topic} was deleted and created again; continuing from its oldest event"
        ),
        Some("ahead_of_stream") => format!(
            "!! reset: topic {topic} holds events up to {} only, not {} (restored from a backup?); continuing from its oldest event",
            reset["stream_last"], reset["last_seen"]
        ),
        _ => format!("!! reset: {data}"),
    }
}

/// The cursor for `--from-start` (`last` = `None`) or `--last N`, from each
/// topic's epoch and sequences as admin reports them.
async fn start_cursor(
    settings: &Settings,
    paths: &[String],
    last: Option<u64>,
) -> Result<String, Error> {
    let admin = Admin::new(settings)?;
    let mut topics: Vec<String> = Vec::new();
    for path in paths {
        let topic = path.split('.').next().unwrap_or_default().to_owned();
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    let mut cursor = String::new();
    for topic in topics {
        let name = topic_name(&topic)?;
        let info = admin.get(&format!("/v1/topics/{name}")).await?;
        let (Some(epoch), Some(first), Some(newest)) = (
            info["epoch"].as_str(),
            info["first_sequence"].as_u64(),
            info["last_sequence"].as_u64(),
        ) else {
            return Err(Error::Failed(format!(
                "admin's info for topic {name} lacks epoch or sequences"
            )));
        };
        // The node sends every event after the cursor's sequence.
        let before_oldest = first.saturating_sub(1);
        let seq = match last {
            None => before_oldest,
            Some(n) => newest.saturating_sub(n).max(before_oldest),
        };
        if !cursor.is_empty() {
            cursor.push(',');
        }
        let _ = sse_protocol::cursor::write_position(&mut cursor, name.as_str(), epoch, seq);
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use super::{describe_reset, printable, without_topics};

    #[test]
    fn a_deleted_topic_leaves_the_cursor() {
        let cursor = "a:e1:5,b:e2:7,ab:e3:9";
        assert_eq!(without_topics(cursor, &[]), cursor);
        assert_eq!(without_topics(cursor, &["b".to_owned()]), "a:e1:5,ab:e3:9");
        assert_eq!(
            without_topics(cursor, &["a".to_owned(), "ab".to_owned()]),
            "b:e2:7"
        );
        assert_eq!(without_topics("", &["a".to_owned()]), "");
    }

    #[test]
    fn what_a_terminal_acts_on_is_written_out() {
        assert_eq!(
            printable("\u{1b}[31mred\u{1b}]0;title\u{7} nul\0 cr\r"),
            "\\u{1b}[31mred\\u{1b}]0;title\\u{7} nul\\u{0} cr\\u{d}"
        );
        assert_eq!(printable("abc\u{202e}def"), "abc\\u{202e}def");
        // Lines, tabs and any other text are shown as they are.
        assert_eq!(printable("a\n    b\tcafé ✓"), "a\n    b\tcafé ✓");
    }

    #[test]
    fn a_reset_past_the_stream_names_both_sequences() {
        let notice = describe_reset(
            r#"{"topic":"orders","reason":"ahead_of_stream","last_seen":9,"stream_last":3,"lost_from":null,"lost_to":null,"resume_from":1}"#,
        );
        assert_eq!(
            notice,
            "!! reset: topic orders holds events up to 3 only, not 9 (restored from a backup?); continuing from its oldest event"
        );
    }
}
