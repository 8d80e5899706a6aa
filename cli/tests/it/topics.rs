//! `ssectl topic …`, `--help`/`--version`, refusals and exit codes.

use crate::support::{Cluster, bounded, run, ssectl_binary};

#[tokio::test]
async fn topic_commands_round_trip_through_admin() {
    bounded(async {
        let cluster = Cluster::start(0).await;

        let created = cluster
            .create_topic(
                "cli-orders",
                &[
                    "--max-age",
                    "2h",
                    "--max-bytes",
                    "10MiB",
                    "--max-consumers",
                    "3000",
                    "--max-messages-per-subject",
                    "5",
                    "--private",
                ],
            )
            .await;
        assert_eq!(created["name"], "cli-orders");
        assert_eq!(created["settings"]["max_age_seconds"], 7200);
        assert_eq!(created["settings"]["max_bytes"], 10 << 20);
        assert_eq!(created["settings"]["access"], "private");
        assert_eq!(created["settings"]["max_consumers"], 3000);
        assert_eq!(created["settings"]["max_messages_per_subject"], 5);
        let table = cluster.run(&["topic", "info", "cli-orders"]).await;
        assert!(
            table
                .stdout
                .lines()
                .any(|line| line.contains("max messages per path") && line.contains('5')),
            "{}",
            table.stdout
        );
        // An update changes what it names and leaves the rest.
        let updated = cluster
            .json(&[
                "topic",
                "update",
                "cli-orders",
                "--max-age",
                "0",
                "--max-messages",
                "100",
                "--public",
            ])
            .await;
        assert_eq!(updated["settings"]["max_age_seconds"], 0);
        assert_eq!(updated["settings"]["max_messages"], 100);
        assert_eq!(updated["settings"]["access"], "public");
        assert_eq!(updated["settings"]["max_bytes"], 10 << 20);
        assert_eq!(updated["settings"]["max_messages_per_subject"], 5);
        let info = cluster.json(&["topic", "info", "cli-orders"]).await;
        assert_eq!(info["settings"]["max_messages"], 100);
        let nothing = cluster.run(&["topic", "update", "cli-orders"]).await;
        assert_eq!(nothing.code, 2, "{}", nothing.stderr);
        assert!(
            nothing.stderr.contains("nothing to change"),
            "{}",
            nothing.stderr
        );
        let both = cluster
            .run(&["topic", "update", "cli-orders", "--private", "--public"])
            .await;
        assert_eq!(both.code, 2, "{}", both.stderr);
        let too_small = cluster
            .run(&["topic", "update", "cli-orders", "--max-bytes", "1KiB"])
            .await;
        assert_eq!(too_small.code, 1, "{}", too_small.stderr);
        assert!(
            too_small.stderr.contains("bad_request") && too_small.stderr.contains("max_bytes"),
            "{}",
            too_small.stderr
        );
        let unknown = cluster
            .run(&["topic", "update", "cli-nowhere", "--max-messages", "1"])
            .await;
        assert_eq!(unknown.code, 1, "{}", unknown.stderr);
        assert!(
            unknown.stderr.contains("topic_not_found"),
            "{}",
            unknown.stderr
        );

        let news = cluster.create_topic("cli-news", &[]).await;
        assert_eq!(news["settings"]["max_consumers"], 10_000, "admin's default");

        let listed = cluster.json(&["topic", "ls"]).await;
        let names: Vec<&str> = listed["topics"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cli-news", "cli-orders"]);

        // The table is for people, but names and headers must be in it.
        let table = cluster.run(&["topic", "ls"]).await;
        assert_eq!(table.code, 0, "{}", table.stderr);
        assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
        assert!(table.stdout.contains("cli-orders"), "{}", table.stdout);

        for data in ["a", "b", "c"] {
            let run = cluster.run(&["pub", "cli-news.x", data]).await;
            assert_eq!(run.code, 0, "{}", run.stderr);
        }
        let info = cluster.json(&["topic", "info", "cli-news"]).await;
        assert_eq!(info["messages"], 3);
        let table = cluster.run(&["topic", "info", "cli-news"]).await;
        assert!(table.stdout.contains("messages"), "{}", table.stdout);
        assert!(table.stdout.contains("10000"), "{}", table.stdout);

        // Without --yes and without a terminal: refused, nothing purged.
        let refused = cluster.run(&["topic", "purge", "cli-news"]).await;
        assert_eq!(refused.code, 2, "{}", refused.stderr);
        assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
        assert_eq!(
            cluster.json(&["topic", "info", "cli-news"]).await["messages"],
            3
        );

        let purged = cluster.json(&["topic", "purge", "cli-news", "--yes"]).await;
        assert_eq!(purged["purged"], 3);
        assert_eq!(
            cluster.json(&["topic", "info", "cli-news"]).await["messages"],
            0
        );

        let refused = cluster.run(&["topic", "rm", "cli-news"]).await;
        assert_eq!(refused.code, 2, "{}", refused.stderr);
        let removed = cluster.json(&["topic", "rm", "cli-news", "--yes"]).await;
        assert_eq!(removed["removed"], "cli-news");

        // Refusals carry admin's code and message, exit 1.
        let missing = cluster.run(&["topic", "info", "cli-news"]).await;
        assert_eq!(missing.code, 1, "{}", missing.stderr);
        assert!(
            missing.stderr.contains("topic_not_found"),
            "{}",
            missing.stderr
        );
        let exists = cluster.run(&["topic", "create", "cli-orders"]).await;
        assert_eq!(exists.code, 1);
        assert!(exists.stderr.contains("topic_exists"), "{}", exists.stderr);
        let bad = cluster
            .run(&["topic", "create", "cli-three", "--replicas", "2"])
            .await;
        assert_eq!(bad.code, 1, "{}", bad.stderr);
        assert!(bad.stderr.contains("bad_request"), "{}", bad.stderr);
        let wrong_token = run(cluster
            .ssectl()
            .args(["--admin-token", "wrong", "topic", "ls"]))
        .await;
        assert_eq!(wrong_token.code, 1);
        assert!(
            wrong_token.stderr.contains("unauthorized"),
            "{}",
            wrong_token.stderr
        );

        // Usage errors: exit 2, and no request made.
        for args in [
            &["topic", "create", "Bad Name"][..],
            &["topic", "create", "x", "--max-age", "soon"],
            &["topic", "frobnicate"],
            &["pub"],
        ] {
            let run = cluster.run(args).await;
            assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        }
    })
    .await;
}

#[tokio::test]
async fn nothing_reachable_exits_3_and_help_exits_0() {
    bounded(async {
        let port = crate::support::free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut command = tokio::process::Command::new(ssectl_binary());
        command
            .env_clear()
            .env("HOME", dir.path())
            .args(["--admin-url", &format!("http://127.0.0.1:{port}")])
            .args(["topic", "ls"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let down = run(&mut command).await;
        assert_eq!(down.code, 3, "{}", down.stderr);
        assert!(down.stderr.contains("cannot connect"), "{}", down.stderr);

        // A config file supplies what flags and environment do not.
        let file = dir.path().join("ssectl.toml");
        std::fs::write(&file, format!("admin_url = \"http://127.0.0.1:{port}\"\n")).unwrap();
        let mut command = tokio::process::Command::new(ssectl_binary());
        command
            .env_clear()
            .env("HOME", dir.path())
            .env("SSECTL_CONFIG", &file)
            .args(["topic", "ls"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let down = run(&mut command).await;
        assert_eq!(down.code, 3, "{}", down.stderr);
        assert!(down.stderr.contains(&port.to_string()), "{}", down.stderr);
        std::fs::write(&file, "admin_ur = \"x\"\n").unwrap();
        let bad = run(&mut command).await;
        assert_eq!(bad.code, 2, "{}", bad.stderr);
        assert!(bad.stderr.contains("admin_ur"), "{}", bad.stderr);

        for flag in ["--help", "--version"] {
            let mut command = tokio::process::Command::new(ssectl_binary());
            command
                .arg(flag)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let out = run(&mut command).await;
            assert_eq!(out.code, 0, "{flag}: {}", out.stderr);
            assert!(out.stdout.contains("ssectl"), "{flag}: {}", out.stdout);
        }

        let mut command = tokio::process::Command::new(ssectl_binary());
        command
            .args(["completions", "bash"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = run(&mut command).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains("_ssectl"), "{}", out.stdout);
        assert!(
            out.stdout.contains("--from-start"),
            "completions name tail's flags"
        );
    })
    .await;
}
