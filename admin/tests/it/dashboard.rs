//! The dashboard in a real browser: Debian's headless Chromium, driven by
//! `admin/tests/browser/dashboard.mjs` (playwright-core). The page loads
//! without a token, shows a topic created through the API, and updates when
//! a node's connection count changes (the node is simulated by writing its
//! report into the bucket, as a node does).
//!
//! Fails, naming what is missing, when Chromium, `node` or the script's
//! `node_modules` are absent (a test that did not run must not report `ok`);
//! `scripts/install-deps` installs them (`apt-get install -y chromium nodejs
//! npm`, `npm ci --prefix admin/tests/browser`).

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use crate::{
    nodes::{bucket, put, report},
    support::{Admin, NatsServer, bounded},
};

/// The browser, the script folder, or why the test cannot run here.
fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    if !chromium.exists() {
        return Err(format!(
            "{} is missing (apt-get install -y chromium)",
            chromium.display()
        ));
    }
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !scripts.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "playwright-core is not installed (npm ci --prefix {})",
            scripts.display()
        ));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.map(|o| o.status.success()).unwrap_or(false) {
        return Err("node is not on PATH (apt-get install -y nodejs)".to_owned());
    }
    Ok((chromium, scripts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_topics_and_live_node_figures() {
    let (chromium, scripts) = match prerequisites() {
        Ok(found) => found,
        // A missing browser is a failure, not a pass: scripts/install-deps
        // installs every prerequisite.
        Err(reason) => panic!("the dashboard browser test cannot run: {reason}"),
    };
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        admin.create_topic(json!({"name": "dash-orders"})).await;
        let store = bucket(&nats, Duration::from_secs(15)).await;
        let node_report = |connections| {
            report(
                "node-dash",
                connections,
                json!({"dash-orders": connections}),
                Duration::ZERO,
            )
        };
        put(&store, &node_report(3)).await;

        let profile = tempfile::tempdir().unwrap();
        let mut browser = Command::new("node")
            .arg(scripts.join("dashboard.mjs"))
            .arg(format!("{}/", admin.base))
            .arg(profile.path())
            .args(["dash-orders", "node-dash", "3", "7"])
            .env("CHROMIUM", &chromium)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
        let mut next_line = async || {
            tokio::time::timeout(Duration::from_secs(40), lines.next_line())
                .await
                .expect("browser script answers in time")
                .expect("browser output")
                .unwrap_or_else(|| "EOF".to_owned())
        };

        let line = next_line().await;
        assert_eq!(line, "READY", "the page did not show the topic and node");
        // The node's connection count changes; the open page must follow.
        put(&store, &node_report(7)).await;
        let line = next_line().await;
        assert_eq!(line, "UPDATED", "the page did not update");
        let status = browser.wait().await.unwrap();
        assert!(status.success());
    })
    .await;
}
