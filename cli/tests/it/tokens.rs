//! Tokens: minted by `ssectl`, accepted by a node; declared invalid by
//! `ssectl token check`, refused by the node.

use serde_json::Value;

use crate::support::{Cluster, HS256_SECRET, bounded};

#[tokio::test]
async fn minted_tokens_open_private_topics_and_check_agrees_with_the_node() {
    bounded(async {
        let cluster = Cluster::start(1).await;
        cluster.create_topic("cli-private", &["--private"]).await;
        let publish = cluster.run(&["pub", "cli-private.alice.1", "hello"]).await;
        assert_eq!(publish.code, 0, "{}", publish.stderr);
        let secret_file = cluster.secret_file.to_str().unwrap().to_owned();

        let minted = cluster
            .json(&[
                "token",
                "mint",
                "--sub",
                "alice",
                "--grant",
                "cli-private.alice.>",
                "--ttl",
                "10m",
                "--hs256-secret-file",
                &secret_file,
            ])
            .await;
        assert_eq!(minted["algorithm"], "HS256");
        let token = minted["token"].as_str().unwrap().to_owned();

        // Check says valid, for the granted path and not for another.
        let check = cluster
            .json(&[
                "token",
                "check",
                &token,
                "--path",
                "cli-private.alice.1",
                "--hs256-secret-file",
                &secret_file,
            ])
            .await;
        assert_eq!(check["valid"], true);
        let forbidden = cluster
            .run(&[
                "token",
                "check",
                &token,
                "--path",
                "cli-private.bob",
                "--hs256-secret-file",
                &secret_file,
            ])
            .await;
        assert_eq!(forbidden.code, 1);
        assert!(
            forbidden.stderr.contains("forbidden"),
            "{}",
            forbidden.stderr
        );

        // The node accepts it for the granted path …
        let tail = cluster
            .run(&[
                "-o",
                "json",
                "tail",
                "cli-private.alice.1",
                "--from-start",
                "-n",
                "1",
                "--token",
                &token,
            ])
            .await;
        assert_eq!(tail.code, 0, "{}", tail.stderr);
        let event: Value = serde_json::from_str(tail.stdout.trim()).unwrap();
        assert_eq!(event["data"], "hello");
        // … and refuses it for another, as check said.
        let tail = cluster
            .run(&["tail", "cli-private.bob", "--token", &token])
            .await;
        assert_eq!(tail.code, 1, "{}", tail.stderr);
        assert!(tail.stderr.contains("forbidden"), "{}", tail.stderr);

        // A token signed with another secret (from the environment): check
        // calls it invalid, and the node refuses it.
        let mut mint = cluster.ssectl();
        mint.env("SSECTL_HS256_SECRET", "another-secret-0123456789abcdef0123")
            .args([
                "token",
                "mint",
                "--sub",
                "mallory",
                "--grant",
                "cli-private",
            ]);
        let forged = crate::support::run(&mut mint).await;
        assert_eq!(forged.code, 0, "{}", forged.stderr);
        let forged = forged.stdout.trim().to_owned();
        let mut check = cluster.ssectl();
        check
            .env("SSECTL_HS256_SECRET", HS256_SECRET)
            .args(["-o", "json", "token", "check", &forged]);
        let verdict = crate::support::run(&mut check).await;
        assert_eq!(verdict.code, 1, "{}", verdict.stderr);
        let verdict: Value = serde_json::from_str(verdict.stdout.trim()).unwrap();
        assert_eq!(verdict["valid"], false);
        assert_eq!(verdict["reason"], "signature");
        let tail = cluster
            .run(&["tail", "cli-private", "--token", &forged])
            .await;
        assert_eq!(tail.code, 1, "{}", tail.stderr);
        assert!(tail.stderr.contains("invalid_token"), "{}", tail.stderr);

        // An expired token, minted by hand: check and node agree again.
        let expired = expired_token(60);
        let verdict = cluster
            .run(&[
                "token",
                "check",
                &expired,
                "--hs256-secret-file",
                &secret_file,
            ])
            .await;
        assert_eq!(verdict.code, 1);
        assert!(verdict.stderr.contains("expired"), "{}", verdict.stderr);
        let tail = cluster
            .run(&["tail", "cli-private", "--token", &expired])
            .await;
        assert_eq!(tail.code, 1);
        assert!(tail.stderr.contains("token_expired"), "{}", tail.stderr);

        // Expired 10 s ago: within a node's default leeway of 30 s, so
        // accepted by both unless the check is told of a narrower one.
        let lately = expired_token(10);
        let check = |leeway: Option<&'static str>| {
            let mut args = vec![
                "token".to_owned(),
                "check".to_owned(),
                lately.clone(),
                "--hs256-secret-file".to_owned(),
                secret_file.clone(),
            ];
            if let Some(leeway) = leeway {
                args.extend(["--leeway".to_owned(), leeway.to_owned()]);
            }
            args
        };
        let args = check(None);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let verdict = cluster.run(&args).await;
        assert_eq!(verdict.code, 0, "{}", verdict.stderr);
        let args = check(Some("0"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let verdict = cluster.run(&args).await;
        assert_eq!(verdict.code, 1, "{}", verdict.stdout);
        assert!(verdict.stderr.contains("expired"), "{}", verdict.stderr);
        // No node takes more than 600 s of leeway, so the check does not
        // judge by it either.
        let args = check(Some("601"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let verdict = cluster.run(&args).await;
        assert_eq!(verdict.code, 2, "{}", verdict.stdout);
        assert!(verdict.stderr.contains("--leeway"), "{}", verdict.stderr);

        // Minting refuses what a node would not honour: exit 2.
        for args in [
            &[
                "token",
                "mint",
                "--sub",
                "a",
                "--grant",
                "x.>.y",
                "--hs256-secret-file",
                &secret_file,
            ][..],
            &["token", "mint", "--sub", "a", "--grant", "x"],
        ] {
            let run = cluster.run(args).await;
            assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        }
    })
    .await;
}

/// An HS256 token whose `exp` is `seconds_ago` past, signed with the nodes' secret
/// (`ssectl` itself refuses to mint one).
fn expired_token(seconds_ago: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": "old", "exp": now - seconds_ago, "sse.subscribe": ["cli-private"] }),
        &jsonwebtoken::EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .unwrap()
}

/// `token mint` with an HS256 secret written to a file in `dir`.
fn mint_with_a_secret_file(dir: &std::path::Path) -> Vec<String> {
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
    [
        "token",
        "mint",
        "--sub",
        "alice",
        "--grant",
        "a.>",
        "--hs256-secret-file",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([secret.to_str().unwrap().to_owned()])
    .collect()
}

/// Commands that reach no server run whatever the settings for reaching
/// one say: a config file or a CA file that is not there.
#[tokio::test]
async fn commands_that_reach_no_server_ignore_the_settings_for_servers() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mint = mint_with_a_secret_file(dir.path());
        for args in [vec!["completions".to_owned(), "bash".to_owned()], mint] {
            let output = tokio::process::Command::new(crate::support::ssectl_binary())
                .args(&args)
                .env("SSECTL_CONFIG", dir.path().join("no-such.toml"))
                .env("SSECTL_CA_FILE", dir.path().join("no-such-ca.pem"))
                .output()
                .await
                .unwrap();
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    })
    .await;
}

/// Output cut short by its reader (`ssectl … | head`) ends the command
/// quietly, with success, as Unix tools do; output that cannot be written
/// at all (a full disk) ends it with exit 1 and why. Never a panic.
#[test]
fn a_closed_stdout_ends_quietly_and_a_full_one_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mint = mint_with_a_secret_file(dir.path());
    let completions = |shell: &str| vec!["completions".to_owned(), shell.to_owned()];
    for args in [completions("bash"), completions("zsh"), mint] {
        let mut child = std::process::Command::new(crate::support::ssectl_binary())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let closed = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&closed.stderr);
        assert!(closed.status.success(), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");

        let full = std::process::Command::new(crate::support::ssectl_binary())
            .args(&args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&full.stderr);
        assert_eq!(full.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot write to stdout"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A key flag wins over the environment: with an HS256 secret file named
/// by the environment, `--es256-key` signs with ES256. Without a flag the
/// environment must name one key; two are refused, naming both.
#[test]
fn a_key_flag_wins_over_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
    let es256 = dir.path().join("es256.pem");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&es256, pair.serialize_pem()).unwrap();
    let mint = |flags: &[&std::path::Path], env: &[(&str, &std::path::Path)]| {
        let mut command = std::process::Command::new(crate::support::ssectl_binary());
        for name in [
            "SSECTL_HS256_SECRET",
            "SSECTL_HS256_SECRET_FILE",
            "SSECTL_RS256_KEY",
            "SSECTL_ES256_KEY",
        ] {
            command.env_remove(name);
        }
        command.args([
            "-o", "json", "token", "mint", "--sub", "a", "--grant", "a.>",
        ]);
        for flag in flags {
            command.arg("--es256-key").arg(flag);
        }
        command.envs(env.iter().copied()).output().unwrap()
    };
    let algorithm = |output: &std::process::Output| {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let minted: Value = serde_json::from_slice(&output.stdout).unwrap();
        minted["algorithm"].as_str().unwrap().to_owned()
    };
    let flag_over_env = mint(&[&es256], &[("SSECTL_HS256_SECRET_FILE", &secret)]);
    assert_eq!(algorithm(&flag_over_env), "ES256");
    let env_alone = mint(&[], &[("SSECTL_ES256_KEY", &es256)]);
    assert_eq!(algorithm(&env_alone), "ES256");
    let two = mint(
        &[],
        &[
            ("SSECTL_HS256_SECRET_FILE", &secret),
            ("SSECTL_ES256_KEY", &es256),
        ],
    );
    assert_eq!(two.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&two.stderr);
    assert!(
        stderr.contains("SSECTL_HS256_SECRET_FILE") && stderr.contains("SSECTL_ES256_KEY"),
        "{stderr}"
    );
}
