//! `ssectl status`.

use std::time::Duration;

use crate::support::{Cluster, bounded, eventually};

#[tokio::test]
async fn status_shows_nodes_nats_and_topics() {
    bounded(async {
        let mut cluster = Cluster::start(1).await;
        let created = cluster
            .create_topic("cli-watched", &["--max-message-bytes", "64KiB"])
            .await;
        assert_eq!(created["settings"]["max_message_bytes"], 65536, "{created}");
        // A subscriber, so the topic shows one.
        let mut tail = cluster
            .ssectl()
            .args(["tail", "cli-watched"])
            .spawn()
            .expect("tail starts");
        let status = eventually(
            "the node and the subscriber to show",
            Duration::from_secs(20),
            || {
                let cluster = &cluster;
                async move {
                    let status = cluster.json(&["status", "--rate-window", "3s"]).await;
                    let node = status["nodes"].as_array()?.first()?.clone();
                    let topic = status["topics"]
                        .as_array()?
                        .iter()
                        .find(|t| t["name"] == "cli-watched")?
                        .clone();
                    (node["connections"] == 1 && topic["subscribers"] == 1)
                        .then_some((status, node))
                }
            },
        )
        .await;
        let (status, node) = status;
        assert_eq!(status["nats_connected"], true);
        assert_eq!(node["state"], "serving");
        // Reports come every second here: a rate within the 3 s window.
        assert!(node["delivered_per_second"].is_number(), "{node}");
        let table = cluster.run(&["status", "--rate-window", "0s"]).await;
        assert_eq!(table.code, 0, "{}", table.stderr);
        assert!(table.stdout.contains("NATS connected"), "{}", table.stdout);
        assert!(table.stdout.contains("cli-watched"), "{}", table.stdout);
        assert!(
            !table.stdout.contains("no node has reported"),
            "{}",
            table.stdout
        );
        // With more topics than the table shows, the busiest come first and
        // the rest are counted; `--all` lists them.
        for i in 0..20 {
            cluster.create_topic(&format!("aa{i:02}"), &[]).await;
        }
        let table = cluster.run(&["status", "--rate-window", "0s"]).await;
        assert_eq!(table.code, 0, "{}", table.stderr);
        let first_topic = table
            .stdout
            .lines()
            .skip_while(|line| !line.starts_with("TOPIC"))
            .nth(1)
            .unwrap_or_default();
        assert!(first_topic.starts_with("cli-watched "), "{}", table.stdout);
        assert!(table.stdout.contains("aa18 "), "{}", table.stdout);
        assert!(!table.stdout.contains("aa19 "), "{}", table.stdout);
        assert!(
            table.stdout.contains("and 1 more topics"),
            "{}",
            table.stdout
        );
        let all = cluster
            .run(&["status", "--rate-window", "0s", "--all"])
            .await;
        assert!(all.stdout.contains("aa19 "), "{}", all.stdout);
        assert!(!all.stdout.contains("more topics"), "{}", all.stdout);
        let _ = tail.kill().await;

        // The node killed: two reports missed (it reports every second
        // here), it shows as silent while its entry waits out the TTL.
        cluster.nodes[0].kill().await;
        let silent = eventually(
            "the killed node to show as silent",
            Duration::from_secs(10),
            || {
                let cluster = &cluster;
                async move {
                    let status = cluster.json(&["status", "--rate-window", "0s"]).await;
                    let node = status["nodes"].as_array()?.first()?.clone();
                    (node["state"] == "silent").then_some(node)
                }
            },
        )
        .await;
        assert!(silent["silent_seconds"].as_u64() >= Some(3), "{silent}");
        let table = cluster.run(&["status", "--rate-window", "0s"]).await;
        assert!(table.stdout.contains(" silent "), "{}", table.stdout);

        // Once its report is older than the TTL, the table is empty and
        // says why, not just empty.
        let alone = eventually(
            "the node's report to expire",
            Duration::from_secs(30),
            || {
                let cluster = &cluster;
                async move {
                    let table = cluster.run(&["status", "--rate-window", "0s"]).await;
                    table
                        .stdout
                        .contains("no node has reported in the last")
                        .then_some(table)
                }
            },
        )
        .await;
        assert_eq!(alone.code, 0, "{}", alone.stderr);

        // Admin down: nothing answers, exit 3.
        cluster.admin.kill().await;
        let down = cluster.run(&["status"]).await;
        assert_eq!(down.code, 3, "{}", down.stderr);
    })
    .await;
}
