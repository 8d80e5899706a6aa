//! The binary: `--check-config` and exit code 64, and a prompt exit on
//! SIGTERM.

use std::{
    process::Command,
    time::{Duration, Instant},
};

fn admin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sse-admin"));
    command
        .env_remove("SSE_ADMIN__TOKEN")
        .env_remove("SSE_CONFIG");
    command
}

#[test]
fn check_config_names_the_bad_key_and_exits_64() {
    let out = admin().arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin.token"), "{stderr}");

    // Variables that cannot be keys (no `__`) are not read.
    let out = admin()
        .arg("--check-config")
        .env("SSE_ADMIN__TOKEN", "t0ken")
        .env("SSE_NODE_BIN", "/somewhere")
        .env("SSE_ADMIN_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // NATS over WebSocket, and credentials given twice, are refused.
    let out = admin()
        .arg("--check-config")
        .env("SSE_ADMIN__TOKEN", "t0ken")
        .env("SSE_NATS__URL", "wss://user:secret@nats.example:443")
        .env("SSE_NATS__NKEY_SEED_FILE", "/run/secrets/user.nk")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nats.url:") && stderr.contains("NATS over WebSocket is not supported"),
        "{stderr}"
    );
    assert!(
        stderr.contains("nats.nkey_seed_file: nats.url carries a user or token too"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret@"), "{stderr}");
    // A misspelt nested key is refused.
    let out = admin()
        .arg("--check-config")
        .env("SSE_ADMIN__TOKEN", "t0ken")
        .env("SSE_ADMIN__TOKN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokn"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.toml");
    std::fs::write(
        &file,
        "[admin]\ntoken = \"t\"\n[http]\nlisten = \"nowhere\"\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let out = admin()
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("http.listen") && stderr.contains("log.format"),
        "{stderr}"
    );

    // The file may also come from SSE_CONFIG; unknown keys are refused.
    std::fs::write(&file, "[admin]\ntoken = \"t\"\ntokn = \"x\"\n").unwrap();
    let out = admin()
        .arg("--check-config")
        .env("SSE_CONFIG", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokn"));

    let out = admin()
        .args(["--check-config", "--config", "/nonexistent/admin.toml"])
        .env("SSE_ADMIN__TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    let out = admin().arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn sigterm_stops_promptly_even_without_nats_and_logs_plain_text() {
    let port = crate::ports::free_port();
    // Port 1 on loopback: nothing listens, NATS stays unreachable.
    let mut child = admin()
        .env("SSE_ADMIN__TOKEN", "t")
        .env("SSE_NATS__URL", "nats://127.0.0.1:1")
        .env("SSE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("SSE_LOG__LEVEL", "info")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "admin did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    // It says that NATS cannot be reached, where, and why: the client's own
    // report says only "IO error".
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            let _ = lines_tx.send(line);
        }
    });
    let mut log = String::new();
    let said = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("admin says NATS cannot be reached within 10 s");
        log.push_str(&line);
        log.push('\n');
        if line.contains("cannot reach nats") {
            break line;
        }
    };
    assert!(said.contains("WARN"), "{said}");
    assert!(said.contains("nats://127.0.0.1:1"), "{said}");
    assert!(said.contains("Connection refused"), "{said}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("admin still running 5 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    // Its log, read by a pipe as a file or a collector would, is plain text.
    reader.join().unwrap();
    log.extend(lines.try_iter().map(|line| line + "\n"));
    assert!(log.contains("INFO"), "{log}");
    // Its one-character token is warned about.
    assert!(log.contains("a token this short can be guessed"), "{log}");
    assert!(!log.contains('\u{1b}'), "terminal colours in {log:?}");
}

/// A client that connects and sends nothing, or stops after a request on a
/// kept-alive connection, cannot hold a connection of admin's for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    crate::support::bounded(async {
        let nats = crate::support::NatsServer::start();
        let admin = crate::support::Admin::start(&nats).await;
        let address = admin.base.trim_start_matches("http://").to_owned();
        let started = Instant::now();
        let mut silent = tokio::net::TcpStream::connect(&address).await.unwrap();
        let mut kept = tokio::net::TcpStream::connect(&address).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let read = kept.read(&mut buf).await.unwrap();
        assert!(
            buf[..read].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..read])
        );
        for (what, connection) in [("silent", &mut silent), ("kept alive", &mut kept)] {
            let end = tokio::time::timeout(Duration::from_secs(30), connection.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{what}: still open after 30 s"));
            assert!(matches!(end, Ok(0) | Err(_)), "{what}: {end:?}");
        }
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}
