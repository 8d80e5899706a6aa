//! `ssectl` over https, as clusters are reached in production: a node that
//! serves TLS itself (`tls.cert_file`), and admin behind a load balancer
//! that terminates TLS (HAProxy), both with certificates of a private CA.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{
    pki::PrivateCa,
    support::{Cluster, bounded, free_port, wait_ok_with},
};

/// HAProxy terminating TLS on a free port in front of `backend`
/// (`http://host:port`); killed when dropped.
struct TlsProxy {
    _child: Child,
    _config: tempfile::NamedTempFile,
    port: u16,
}

impl TlsProxy {
    fn start(combined_pem: &Path, backend: &str) -> Self {
        let port = free_port();
        let server = backend.trim_start_matches("http://");
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            config.path(),
            format!(
                "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  \
                 timeout server 60s\n\
                 frontend tls\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend plain\n\
                 backend plain\n  server one {server}\n",
                combined_pem.display()
            ),
        )
        .unwrap();
        let binary = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("haproxy"));
        let child = Command::new(&binary)
            .arg("-db")
            .arg("-f")
            .arg(config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} cannot start ({e}): scripts/install-deps installs HAProxy",
                    binary.display()
                )
            });
        Self {
            _child: child,
            _config: config,
            port,
        }
    }
}

/// A client that trusts the private CA, to wait for the servers.
fn trusting(ca: &Path) -> reqwest::Client {
    crate::support::install_crypto_provider();
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn over_https_ssectl_trusts_the_ca_file_and_says_why_it_refuses() {
    bounded(async {
        let ca = PrivateCa::new();
        ca.issue("server", &["localhost", "127.0.0.1"]);
        // HAProxy takes the certificate and its key in one file.
        let combined = ca.path("haproxy.pem");
        let read = |name: &str| std::fs::read_to_string(ca.path(name)).unwrap();
        std::fs::write(&combined, read("server.pem") + &read("server.key")).unwrap();
        let mut cluster = Cluster::start(0).await;
        let (cert, key) = (ca.path("server.pem"), ca.path("server.key"));
        let node = cluster.start_node_with(
            &[
                ("SSE_TLS__CERT_FILE", cert.to_str().unwrap()),
                ("SSE_TLS__KEY_FILE", key.to_str().unwrap()),
            ],
            "https",
        );
        let node_port = node.base.rsplit(':').next().unwrap().to_owned();
        let node_url = format!("https://localhost:{node_port}");
        let proxy = TlsProxy::start(&combined, &cluster.admin.base);
        let admin_url = format!("https://localhost:{}", proxy.port);
        let client = trusting(&ca.path("ca.pem"));
        wait_ok_with(
            &client,
            "node ready over https",
            format!("{node_url}/readyz"),
        )
        .await;
        wait_ok_with(
            &client,
            "admin through the TLS proxy",
            format!("{admin_url}/readyz"),
        )
        .await;
        cluster.nodes.push(node);

        let ca_file = ca.path("ca.pem");
        let ca_file = ca_file.to_str().unwrap();
        let over_https = |args: &[&str], with_ca: bool| {
            let mut command = cluster.ssectl();
            command
                .env("SSECTL_ADMIN_URL", &admin_url)
                .env("SSECTL_URL", &node_url);
            if with_ca {
                command.env("SSECTL_CA_FILE", ca_file);
            }
            command.args(args);
            command
        };

        // Admin through the proxy, the node directly, both over TLS.
        let run =
            crate::support::run(&mut over_https(&["topic", "create", "tls-feed"], true)).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let run = crate::support::run(&mut over_https(&["pub", "tls-feed.a", "hello"], true)).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let id = run.stdout.trim().to_owned();
        let tail = ["-o", "json", "tail", "tls-feed", "--from-start", "-n", "1"];
        let run = crate::support::run(&mut over_https(&tail, true)).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let event: Value = serde_json::from_str(run.stdout.trim()).unwrap();
        assert_eq!(event["id"], id.as_str());
        assert_eq!(event["data"], "hello");
        // The certificate names the address too.
        let mut by_address = over_https(&tail, true);
        by_address.env("SSECTL_URL", format!("https://127.0.0.1:{node_port}"));
        let run = crate::support::run(&mut by_address).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains("hello"), "{}", run.stdout);

        // Without the CA: nothing reachable, and why.
        for args in [&tail[..], &["topic", "ls"]] {
            let run = crate::support::run(&mut over_https(args, false)).await;
            assert_eq!(run.code, 3, "{args:?}: {}", run.stderr);
            assert!(
                run.stderr.contains("UnknownIssuer") && run.stderr.contains("--ca-file"),
                "{args:?}: {}",
                run.stderr
            );
        }

        // The CA from the config file, relative to the file's folder.
        let config = ca.path("ssectl.toml");
        std::fs::write(&config, "ca_file = \"ca.pem\"\n").unwrap();
        let mut from_config = over_https(&["-o", "json", "topic", "ls"], false);
        from_config.env("SSECTL_CONFIG", &config);
        let run = crate::support::run(&mut from_config).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains("tls-feed"), "{}", run.stdout);

        // Or among the system's authorities, as OpenSSL's variable names them.
        let mut from_system = over_https(&["topic", "ls"], false);
        from_system.env("SSL_CERT_FILE", ca_file);
        let run = crate::support::run(&mut from_system).await;
        assert_eq!(run.code, 0, "{}", run.stderr);

        // https:// to a server that speaks plain HTTP.
        let mut to_plain = over_https(&["topic", "ls"], true);
        to_plain.env(
            "SSECTL_ADMIN_URL",
            cluster.admin.base.replace("http://", "https://"),
        );
        let run = crate::support::run(&mut to_plain).await;
        assert_eq!(run.code, 3, "{}", run.stderr);
        assert!(run.stderr.contains("use an http:// URL"), "{}", run.stderr);

        // A CA file that cannot be used is a usage error.
        for (file, says) in [
            (ca.path("absent.pem"), "cannot read CA file"),
            (ca.path("server.key"), "holds no PEM certificate"),
        ] {
            let mut command = over_https(&["topic", "ls"], false);
            command.env("SSECTL_CA_FILE", &file);
            let run = crate::support::run(&mut command).await;
            assert_eq!(run.code, 2, "{}: {}", file.display(), run.stderr);
            assert!(run.stderr.contains(says), "{}", run.stderr);
        }
    })
    .await;
}
