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

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::json;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use crate::{
    nodes::{bucket, put, report},
    support::{Admin, NatsServer, bounded, test_config},
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

/// `dashboard.mjs` driving Chromium on admin's page, in a profile of its
/// own, and the lines it prints.
struct Browser {
    script: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(chromium: &Path, scripts: &Path, admin: &str, args: &[&str]) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut script = Command::new("node")
            .arg(scripts.join("dashboard.mjs"))
            .arg(format!("{admin}/"))
            .arg(profile.path())
            .args(args)
            .env("CHROMIUM", chromium)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let lines = BufReader::new(script.stdout.take().unwrap()).lines();
        Self {
            script,
            lines,
            _profile: profile,
        }
    }

    /// The script's next line, `EOF` once it has ended.
    async fn next_line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(40), self.lines.next_line())
            .await
            .expect("browser script answers in time")
            .expect("browser output")
            .unwrap_or_else(|| "EOF".to_owned())
    }

    /// Whether the script ended with success.
    async fn succeeded(mut self) -> bool {
        self.script.wait().await.unwrap().success()
    }
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
        let first = node_report(3);
        put(&store, &first).await;
        // Its next report, 4 s later, with 400 more events delivered:
        // 100.0 a second, whatever the pace of the page's snapshots.
        let mut second = node_report(7);
        let reported = |report: &serde_json::Value| {
            OffsetDateTime::parse(report["reported_at"].as_str().unwrap(), &Rfc3339).unwrap()
        };
        second["reported_at"] = (reported(&first) + Duration::from_secs(4))
            .format(&Rfc3339)
            .unwrap()
            .into();
        second["events_delivered"] = (first["events_delivered"].as_u64().unwrap() + 400).into();

        let mut browser = Browser::open(
            &chromium,
            &scripts,
            &admin.base,
            &["dash-orders", "node-dash", "3", "7", "100.0"],
        );
        let line = browser.next_line().await;
        assert_eq!(line, "READY", "the page did not show the topic and node");
        // The node's connection count changes; the open page must follow.
        put(&store, &second).await;
        let line = browser.next_line().await;
        assert_eq!(line, "UPDATED", "the page did not update");
        assert!(browser.succeeded().await);
    })
    .await;
}

/// A page whose stream is refused (admin holds its most dashboard streams;
/// an ingress's 502 in a rollout is the same to a browser) opens it again
/// and goes live once admin takes it: an `EventSource` alone would give up
/// for good at the first answer that is not 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_refused_at_first_goes_live_once_admin_takes_it() {
    let (chromium, scripts) = match prerequisites() {
        Ok(found) => found,
        Err(reason) => panic!("the dashboard browser test cannot run: {reason}"),
    };
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start_with(test_config(
            &nats.url,
            "[admin]\nmax_dashboard_streams = 1\n",
        ))
        .await;
        let held = admin
            .http
            .get(format!("{}/v1/dashboard/stream", admin.base))
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), 200);

        let mut browser = Browser::open(&chromium, &scripts, &admin.base, &["--reopen"]);
        assert_eq!(browser.next_line().await, "REFUSED");
        drop(held);
        assert_eq!(
            browser.next_line().await,
            "LIVE",
            "the page did not open its stream again"
        );
        assert!(browser.succeeded().await);
    })
    .await;
}
