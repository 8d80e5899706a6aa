//! The node on NATS servers that authenticate with NATS's own schemes: a
//! user nkey (`nats.nkey_seed_file`), and a credentials file in operator
//! mode (`nats.creds_file`, a user JWT signed by its account, whose JWT the
//! operator signed), as `nsc` sets servers up.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use nkeys::KeyPair;
use serde_json::{Value, json};

use crate::{
    nats_tls::{ConfiguredNats, delivers},
    support::*,
};

/// A JWT as nats-server reads them: `ed25519-nkey`, signed by `issuer`.
fn nats_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": format!("{:032X}", fastrand::u128(..)),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A credentials file as `nsc generate creds` writes it.
fn creds_file(user_jwt: &str, user: &KeyPair) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n",
        user.seed().unwrap()
    )
}

#[tokio::test]
async fn a_node_authenticates_with_a_user_nkey() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (node_key, tester) = (KeyPair::new_user(), KeyPair::new_user());
        let nats = ConfiguredNats::start(&format!(
            "authorization {{ users = [ {{nkey: {}}}, {{nkey: {}}} ] }}\n",
            node_key.public_key(),
            tester.public_key()
        ));
        let url = format!("nats://127.0.0.1:{}", nats.port);
        let js = nats
            .jetstream(&url, || {
                async_nats::ConnectOptions::new().nkey(tester.seed().unwrap())
            })
            .await;
        create_topic(&js, "by-nkey", None).await;

        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("node.nk");
        std::fs::write(&seed, format!("{}\n", node_key.seed().unwrap())).unwrap();
        let node = NodeProc::start(
            &url,
            &[("SSE_NATS__NKEY_SEED_FILE", seed.to_str().unwrap())],
        )
        .await;
        delivers(&js, &node, "by-nkey").await;
    })
    .await
    .expect("test exceeded its time limit");
}

#[tokio::test]
async fn a_node_authenticates_with_a_credentials_file_in_operator_mode() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let operator = KeyPair::new_operator();
        let (system, app, user) = (
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_user(),
        );
        let operator_jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            "test operator",
            json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
        );
        let limits = json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        });
        let system_jwt = nats_jwt(
            &operator,
            &system.public_key(),
            "SYS",
            json!({"type": "account", "version": 2, "limits": limits}),
        );
        let mut app_limits = limits.clone();
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            app_limits[key] = json!(-1);
        }
        let app_jwt = nats_jwt(
            &operator,
            &app.public_key(),
            "APP",
            json!({"type": "account", "version": 2, "limits": app_limits}),
        );
        let user_jwt = nats_jwt(
            &app,
            &user.public_key(),
            "sse-node",
            json!({
                "type": "user", "version": 2, "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1,
            }),
        );
        let nats = ConfiguredNats::start(&format!(
            "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: {system_jwt}\n  {app_key}: {app_jwt}\n}}\n",
            sys = system.public_key(),
            app_key = app.public_key(),
        ));
        let creds = creds_file(&user_jwt, &user);
        let url = format!("nats://127.0.0.1:{}", nats.port);
        let js = nats
            .jetstream(&url, || {
                async_nats::ConnectOptions::with_credentials(&creds).unwrap()
            })
            .await;
        create_topic(&js, "by-creds", None).await;

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.creds");
        std::fs::write(&file, &creds).unwrap();
        let node = NodeProc::start(&url, &[("SSE_NATS__CREDS_FILE", file.to_str().unwrap())]).await;
        delivers(&js, &node, "by-creds").await;
    })
    .await
    .expect("test exceeded its time limit");
}
