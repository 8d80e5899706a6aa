//! `ssectl pub`: publish through admin's `POST /v1/topics/{topic}/events`.
//!
//! Admin answers once JetStream has stored the event, with the id a client
//! of a single-topic subscription sees; that id is what is printed. Data
//! read from stdin loses one final line ending (`echo` adds one). With
//! `--lines`, every line of stdin is one event, published in order, one at
//! a time so their order is the stream's order.

use std::{
    io::{BufRead, IsTerminal, Read},
    time::Instant,
};

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    Error, args::Publish, client::Admin, commands::topic::topic_name, output::Output,
    settings::Settings,
};

/// Runs `ssectl pub`.
pub async fn run(settings: &Settings, out: Output, publish: Publish) -> Result<(), Error> {
    let topic = topic_name(publish.path.split('.').next().unwrap_or_default())?;
    let admin = Admin::new(settings)?;
    let endpoint = format!("/v1/topics/{topic}/events");
    let body = |data: &str, id: Option<&str>| {
        let mut body = json!({ "subject": publish.path, "data": data });
        if let Some(event) = &publish.event {
            body["event"] = json!(event);
        }
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        body
    };
    if publish.lines {
        let started = Instant::now();
        let mut count: u64 = 0;
        let mut last = Value::Null;
        // A line that cannot be published stops the run: what was published
        // before it is said, so the rest can be sent again from there.
        let stopped_at = |count: u64, last: &Value| {
            let last = last.get("id").and_then(Value::as_str).unwrap_or("none");
            crate::errln!(
                "ssectl: stopped at line {}; published before it: {count}, the last with id {last}",
                count + 1
            );
        };
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| {
                stopped_at(count, &last);
                Error::Failed(format!("cannot read stdin: {e}"))
            })?;
            last = match admin
                .call(Method::POST, &endpoint, Some(&body(&line, None)))
                .await
            {
                Ok(published) => published,
                Err(error) => {
                    stopped_at(count, &last);
                    return Err(error);
                }
            };
            count += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        };
        if out.json() {
            out.print_json(&json!({
                "published": count,
                "seconds": seconds,
                "events_per_second": rate,
                "last_id": last.get("id"),
            }));
        } else {
            crate::outln!("published {count} events in {seconds:.2} s ({rate:.0} events/s)");
            if let Some(id) = last.get("id").and_then(Value::as_str) {
                crate::outln!("last id {id}");
            }
        }
        return Ok(());
    }
    let data = match publish.data.as_deref() {
        Some("-") | None => read_stdin()?,
        Some(data) => data.to_owned(),
    };
    let published = admin
        .call(
            Method::POST,
            &endpoint,
            Some(&body(&data, publish.id.as_deref())),
        )
        .await?;
    if out.json() {
        out.print_json(&published);
    } else {
        crate::outln!("{}", crate::output::cell(&published["id"]));
        if published["duplicate"].as_bool() == Some(true) {
            crate::errln!(
                "ssectl: duplicate: an event with this --id was already stored; its id is shown"
            );
        }
    }
    Ok(())
}

fn read_stdin() -> Result<String, Error> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Error::Usage(
            "give the event's DATA as an argument, or pipe it on stdin".to_owned(),
        ));
    }
    let mut data = String::new();
    stdin
        .read_to_string(&mut data)
        .map_err(|e| Error::Failed(format!("cannot read stdin as UTF-8 text: {e}")))?;
    if data.ends_with('\n') {
        data.pop();
        if data.ends_with('\r') {
            data.pop();
        }
    }
    Ok(data)
}
