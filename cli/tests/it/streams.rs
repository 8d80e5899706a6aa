//! `ssectl pub` and `ssectl tail`, including a tail whose node is killed.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::mpsc,
};

use crate::support::{Cluster, bounded, eventually, http_client, run_with_stdin, wait_ok_with};

/// Publishes `data` on `path` and returns the printed id.
async fn publish(cluster: &Cluster, path: &str, data: &str) -> String {
    let run = cluster.run(&["pub", path, data]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.stdout.trim().to_owned();
    assert!(
        id.starts_with(&format!("{}:", path.split('.').next().unwrap())),
        "{id}"
    );
    id
}

/// `tail … -o json` parsed into (id, event, data).
fn events(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            (
                v["id"].as_str().unwrap().to_owned(),
                v["event"].as_str().unwrap().to_owned(),
                v["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn pub_prints_ids_and_tail_reads_them_back() {
    bounded(async {
        let cluster = Cluster::start(1).await;
        cluster.create_topic("cli-feed", &[]).await;

        let first = publish(&cluster, "cli-feed.a", "one").await;
        let json = cluster
            .json(&["pub", "cli-feed.b", "two", "--event", "tick", "--id", "m-2"])
            .await;
        assert_eq!(json["duplicate"], false);
        let second = json["id"].as_str().unwrap().to_owned();
        // The same --id again: de-duplicated, the stored event's id.
        let again = cluster
            .json(&["pub", "cli-feed.b", "two", "--event", "tick", "--id", "m-2"])
            .await;
        assert_eq!(again["duplicate"], true);
        assert_eq!(again["id"], second.as_str());
        let from_stdin = run_with_stdin(
            {
                let mut c = cluster.ssectl();
                c.args(["pub", "cli-feed.a", "-"]);
                c
            },
            "line 1\nline 2\n",
        )
        .await;
        assert_eq!(from_stdin.code, 0, "{}", from_stdin.stderr);
        let lines = run_with_stdin(
            {
                let mut c = cluster.ssectl();
                c.args(["-o", "json", "pub", "cli-feed.c", "--lines"]);
                c
            },
            "x1\nx2\nx3\n",
        )
        .await;
        assert_eq!(lines.code, 0, "{}", lines.stderr);
        let summary: Value = serde_json::from_str(&lines.stdout).unwrap();
        assert_eq!(summary["published"], 3);
        assert!(summary["events_per_second"].as_f64().unwrap() > 0.0);
        // A line admin refuses stops the run, which says how far it got.
        cluster
            .create_topic("cli-lines", &["--max-message-bytes", "1KiB"])
            .await;
        let stopped = run_with_stdin(
            {
                let mut c = cluster.ssectl();
                c.args(["pub", "cli-lines", "--lines"]);
                c
            },
            &format!("fits\n{}\nnever\n", "y".repeat(2000)),
        )
        .await;
        assert_ne!(stopped.code, 0, "{}", stopped.stdout);
        assert!(
            stopped
                .stderr
                .contains("stopped at line 2; published before it: 1, the last with id cli-lines:"),
            "{}",
            stopped.stderr
        );

        // Everything from the start, in order, with the ids pub printed.
        let run = cluster
            .run(&["-o", "json", "tail", "cli-feed", "--from-start", "-n", "6"])
            .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let got = events(&run.stdout);
        let data: Vec<&str> = got.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(data, ["one", "two", "line 1\nline 2", "x1", "x2", "x3"]);
        assert_eq!(got[0].0, first);
        assert_eq!(got[1].0, second);
        assert_eq!(got[1].1, "tick");
        assert_eq!(got[0].1, "message");

        // --last 2 starts two sequences before the newest.
        let run = cluster
            .run(&["-o", "json", "tail", "cli-feed", "--last", "2", "-n", "2"])
            .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let data: Vec<String> = events(&run.stdout).into_iter().map(|e| e.2).collect();
        assert_eq!(data, ["x2", "x3"]);

        // --from an id: what follows it; a narrower path filters.
        let run = cluster
            .run(&[
                "-o",
                "json",
                "tail",
                "cli-feed.a",
                "--from",
                &first,
                "-n",
                "1",
            ])
            .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(events(&run.stdout)[0].2, "line 1\nline 2");

        // The table shows id, event name and data.
        let run = cluster
            .run(&["tail", "cli-feed.b", "--from-start", "-n", "1"])
            .await;
        assert_eq!(run.stdout.trim(), format!("{second}  tick  two"));

        // A reset is printed as a notice: resume with an id from a topic
        // that was removed and created again.
        cluster.create_topic("cli-again", &[]).await;
        let old_id = publish(&cluster, "cli-again", "old").await;
        let rm = cluster.run(&["topic", "rm", "cli-again", "--yes"]).await;
        assert_eq!(rm.code, 0, "{}", rm.stderr);
        cluster.create_topic("cli-again", &[]).await;
        publish(&cluster, "cli-again", "new").await;
        let run = cluster
            .run(&["tail", "cli-again", "--from", &old_id, "-n", "1"])
            .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let out: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(
            out[0], "!! reset: topic cli-again was deleted and created again; continuing from its oldest event",
            "{}",
            run.stdout
        );
        assert!(out[1].ends_with("  message  new"), "{}", run.stdout);
        assert_eq!(out.len(), 2, "{}", run.stdout);

        // Refusals from the node: exit 1 with its code.
        let run = cluster.run(&["tail", "cli-nosuch"]).await;
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains("unknown_topic"), "{}", run.stderr);
        let run = cluster
            .run(&["tail", "cli-feed", "--from", "garbage"])
            .await;
        assert_eq!(run.code, 2, "{}", run.stderr);
        // Shorter than any node's heartbeat: it would reconnect on end.
        let run = cluster
            .run(&["tail", "cli-feed", "--silence-timeout", "1ms"])
            .await;
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.contains("--silence-timeout"), "{}", run.stderr);

        // A node that answers 503 was reached: exit 1 with its code, not 3
        // (nothing reachable).
        let full = cluster.start_node_with(&[("SSE_HTTP__MAX_CONNECTIONS", "1")], "http");
        wait_ok_with(&http_client(), "the node", format!("{}/readyz", full.base)).await;
        let mut holder = cluster
            .ssectl()
            .args(["--url", &full.base, "tail", "cli-feed"])
            .spawn()
            .expect("tail starts");
        subscribed_on(&full.base, 1).await;
        let run = cluster
            .run(&["--url", &full.base, "tail", "cli-feed", "-n", "1"])
            .await;
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains("node_full"), "{}", run.stderr);
        holder.kill().await.unwrap();
    })
    .await;
}

/// A tail whose topic is deleted prints a notice and goes on with its other
/// topics; once none is left it ends, saying so.
#[tokio::test]
async fn tail_says_when_its_topic_is_deleted_and_goes_on_with_the_others() {
    bounded(async {
        let cluster = Cluster::start(1).await;
        cluster.create_topic("cli-gone", &[]).await;
        cluster.create_topic("cli-stays", &[]).await;
        // From the start: the event below is read whether it is
        // published before or after the tail connects.
        let (mut tail, mut out, mut err) = spawn_tail(
            &cluster,
            &["tail", "cli-gone", "cli-stays.>", "--from-start"],
        );
        publish(&cluster, "cli-gone", "before").await;
        let first = next(&mut out).await;
        assert!(first.ends_with("  message  before"), "{first}");
        let rm = cluster.run(&["topic", "rm", "cli-gone", "--yes"]).await;
        assert_eq!(rm.code, 0, "{}", rm.stderr);
        assert_eq!(next(&mut out).await, "!! topic cli-gone was deleted");
        publish(&cluster, "cli-stays.x", "after").await;
        let after = next(&mut out).await;
        assert!(after.ends_with("  message  after"), "{after}");

        let rm = cluster.run(&["topic", "rm", "cli-stays", "--yes"]).await;
        assert_eq!(rm.code, 0, "{}", rm.stderr);
        assert_eq!(next(&mut out).await, "!! topic cli-stays was deleted");
        let status = tokio::time::timeout(Duration::from_secs(15), tail.wait())
            .await
            .expect("the tail ends")
            .unwrap();
        // Everything it wrote, once its stderr closed.
        let mut stderr = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), err.recv()).await {
            stderr.push(line);
        }
        assert_eq!(status.code(), Some(1), "{stderr:?}");
        assert!(
            stderr
                .iter()
                .any(|l| l.contains("topic cli-gone was deleted; going on with cli-stays.>")),
            "{stderr:?}"
        );
        assert!(
            stderr.iter().any(|l| l.contains("read nothing else")),
            "{stderr:?}"
        );
    })
    .await;
}

/// The next line of a running tail's output, within 15 s.
async fn next(out: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(15), out.recv())
        .await
        .expect("a line in time")
        .expect("tail open")
}

/// `ssectl args…` started, with its stdout and stderr lines as they come.
fn spawn_tail(
    cluster: &Cluster,
    args: &[&str],
) -> (
    tokio::process::Child,
    mpsc::UnboundedReceiver<String>,
    mpsc::UnboundedReceiver<String>,
) {
    let mut tail = cluster
        .ssectl()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tail starts");
    let (out, err) = collect_lines(&mut tail);
    (tail, out, err)
}

/// Lines of a running child's stdout and stderr, as they come.
fn collect_lines(
    child: &mut tokio::process::Child,
) -> (
    mpsc::UnboundedReceiver<String>,
    mpsc::UnboundedReceiver<String>,
) {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (err_tx, err_rx) = mpsc::unbounded_channel();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            let _ = out_tx.send(line);
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = err_tx.send(line);
        }
    });
    (out_rx, err_rx)
}

#[tokio::test]
async fn tail_survives_the_kill_of_its_node_and_resumes_once() {
    bounded(async {
        let mut cluster = Cluster::start(2).await;
        cluster.create_topic("cli-live", &[]).await;
        // SSECTL_URL lists node A then node B: the tail reads from A.
        let (mut tail, mut out, mut err) =
            spawn_tail(&cluster, &["-o", "json", "tail", "cli-live", "-n", "6"]);
        // The tail is connected once node A counts a subscriber.
        subscribed_on(&cluster.nodes[0].base, 1).await;
        // A second tail whose stderr nobody reads any more (`2>&1 | head`):
        // its notes of the resume are dropped, and it ends as well.
        let mut deaf = cluster
            .ssectl()
            .args(["-o", "json", "tail", "cli-live", "-n", "6"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tail starts");
        drop(deaf.stderr.take());
        let mut deaf_out = BufReader::new(deaf.stdout.take().unwrap()).lines();
        subscribed_on(&cluster.nodes[0].base, 2).await;
        let mut got = Vec::new();
        for n in 1..=3 {
            publish(&cluster, "cli-live", &format!("e{n}")).await;
        }
        while got.len() < 3 {
            got.push(
                tokio::time::timeout(Duration::from_secs(15), out.recv())
                    .await
                    .expect("events before the kill")
                    .expect("tail open"),
            );
        }
        cluster.nodes[0].kill().await;
        // Published while the tail has no node: it must get them on B.
        for n in 4..=6 {
            publish(&cluster, "cli-live", &format!("e{n}")).await;
        }
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(20), out.recv()).await {
            got.push(line);
        }
        let stderr = ended(&mut tail, &mut err).await;
        let mut deaf_got = Vec::new();
        while let Some(line) = deaf_out.next_line().await.unwrap() {
            deaf_got.push(line);
        }
        let deaf_status = tokio::time::timeout(Duration::from_secs(10), deaf.wait())
            .await
            .expect("the second tail ends after -n events")
            .unwrap();
        assert!(deaf_status.success(), "{deaf_status:?}");
        assert_eq!(events(&deaf_got.join("\n")), events(&got.join("\n")));
        let got = events(&got.join("\n"));
        let data: Vec<&str> = got.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(
            data,
            ["e1", "e2", "e3", "e4", "e5", "e6"],
            "nothing lost, nothing twice"
        );
        let seqs: Vec<u64> = got
            .iter()
            .map(|e| e.0.rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        let resumes = stderr
            .iter()
            .filter(|l| l.contains("resuming from"))
            .count();
        assert_eq!(resumes, 1, "{stderr:?}");
        let node_b = &cluster.nodes[1].base;
        assert!(
            stderr
                .iter()
                .any(|l| l.contains(&format!("resumed on {node_b}"))),
            "{stderr:?}"
        );
    })
    .await;
}

/// Waits for a tail run with `-n` to end, and checks that it ended well;
/// returns what it said on stderr.
async fn ended(
    tail: &mut tokio::process::Child,
    stderr: &mut mpsc::UnboundedReceiver<String>,
) -> Vec<String> {
    let status = tokio::time::timeout(Duration::from_secs(10), tail.wait())
        .await
        .expect("tail ends after -n events")
        .unwrap();
    let mut said = Vec::new();
    while let Ok(line) = stderr.try_recv() {
        said.push(line);
    }
    assert!(status.success(), "{said:?}");
    said
}

/// Waits until the node at `base` counts `clients` connected clients.
async fn subscribed_on(base: &str, clients: u32) {
    eventually("the tail to subscribe", Duration::from_secs(15), || {
        let url = format!("{base}/metrics");
        async move {
            let text = crate::support::http_client()
                .get(&url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let expected = format!("sse_clients_connected {clients}");
            text.lines().any(|l| l == expected).then_some(())
        }
    })
    .await;
}

/// A node that hangs (SIGSTOP) keeps the connection open and sends nothing,
/// not even heartbeats: the tail gives it up after `--silence-timeout` and
/// resumes on the next node with nothing lost.
#[tokio::test]
async fn tail_leaves_a_node_that_hangs_for_the_next() {
    bounded(async {
        let cluster = Cluster::start(2).await;
        cluster.create_topic("cli-hang", &[]).await;
        // SSECTL_URL lists node A then node B: the tail reads from A.
        let (mut tail, mut out, mut err) = spawn_tail(
            &cluster,
            &[
                "-o",
                "json",
                "tail",
                "cli-hang",
                "-n",
                "2",
                "--silence-timeout",
                "3s",
            ],
        );
        subscribed_on(&cluster.nodes[0].base, 1).await;
        publish(&cluster, "cli-hang", "e1").await;
        let mut got = vec![
            tokio::time::timeout(Duration::from_secs(15), out.recv())
                .await
                .expect("the event before the hang")
                .expect("tail open"),
        ];
        // The tail's silence is counted from the last byte it read, which
        // came before this line did: stopping the node takes time of its own.
        let heard_last = std::time::Instant::now();
        cluster.nodes[0].signal("STOP").await;
        publish(&cluster, "cli-hang", "e2").await;
        got.push(
            tokio::time::timeout(Duration::from_secs(20), out.recv())
                .await
                .expect("the event published while node A hung, from node B")
                .expect("tail open"),
        );
        let waited = heard_last.elapsed();
        cluster.nodes[0].signal("CONT").await;
        let stderr = ended(&mut tail, &mut err).await;
        let got = events(&got.join("\n"));
        let data: Vec<&str> = got.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(data, ["e1", "e2"], "nothing lost, nothing twice");
        // The node's heartbeats come every 15 s: three silent seconds are
        // the timeout, not a heartbeat missed by chance. The tail read e1 a
        // little before this test did, hence the 100 ms.
        assert!(waited >= Duration::from_millis(2_900), "{waited:?}");
        assert!(
            stderr.iter().any(|l| l.contains("nothing from it for 3s")),
            "{stderr:?}"
        );
        let node_b = &cluster.nodes[1].base;
        assert!(
            stderr
                .iter()
                .any(|l| l.contains(&format!("resumed on {node_b}"))),
            "{stderr:?}"
        );
    })
    .await;
}
