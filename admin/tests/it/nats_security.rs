//! Admin on NATS servers that require TLS and verify their clients, or
//! authenticate users by nkey: the same `nats.tls_*` and
//! `nats.nkey_seed_file` keys as the nodes, read by the same code.

use serde_json::json;

use crate::{
    pki::PrivateCa,
    support::{Admin, NatsServer, bounded, test_config},
};

#[tokio::test]
async fn admin_manages_topics_on_a_nats_that_verifies_clients() {
    bounded(async {
        let ca = PrivateCa::new();
        ca.issue("server", &["localhost", "127.0.0.1"]);
        ca.issue("admin", &["sse-admin"]);
        let config = ca.path("nats.conf");
        std::fs::write(
            &config,
            format!(
                "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n}}\n",
                ca.path("server.pem"),
                ca.path("server.key"),
                ca.path("ca.pem"),
            ),
        )
        .unwrap();
        let nats = NatsServer::start_with_args(&["-c", config.to_str().unwrap()]);
        let tls = format!(
            "[nats]\ntls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            ca.path("ca.pem"),
            ca.path("admin.pem"),
            ca.path("admin.key"),
        );
        let admin = Admin::start_with(test_config(&nats.url, &tls)).await;
        let created = admin.create_topic(json!({"name": "secure"})).await;
        assert_eq!(created["name"], "secure", "{created}");
    })
    .await;
}

#[tokio::test]
async fn admin_manages_topics_on_a_nats_that_authenticates_by_nkey() {
    bounded(async {
        let user = nkeys::KeyPair::new_user();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "authorization {{ users = [ {{nkey: {}}} ] }}\n",
                user.public_key()
            ),
        )
        .unwrap();
        let seed = dir.path().join("admin.nk");
        std::fs::write(&seed, user.seed().unwrap()).unwrap();
        let nats = NatsServer::start_with_args(&["-c", config.to_str().unwrap()]);
        let admin = Admin::start_with(test_config(
            &nats.url,
            &format!("[nats]\nnkey_seed_file = {seed:?}\n"),
        ))
        .await;
        let created = admin.create_topic(json!({"name": "by-nkey"})).await;
        assert_eq!(created["name"], "by-nkey", "{created}");
    })
    .await;
}
