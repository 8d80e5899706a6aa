//! Private topics: every way a token is sent, every way it can be wrong,
//! grants narrower than the request, and a token expiring mid-stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::support::*;

const T: Duration = Duration::from_secs(10);
/// The HS256 secret of [`node`].
pub(crate) const SECRET: &str = "test-secret-test-secret-test-secret!";
const RSA_PRIVATE: &str = include_str!("keys/rs256_test_private.pem");
const RSA_PUBLIC: &str = include_str!("keys/rs256_test_public.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with [`SECRET`].
pub(crate) fn hs256(claims: Value) -> String {
    hs256_with(SECRET, claims)
}

fn hs256_with(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Claims that grant `patterns` for five minutes.
pub(crate) fn grant(patterns: &[&str]) -> Value {
    json!({ "exp": now() + 300, "sse.subscribe": patterns })
}

/// A node that knows the HS256 secret, with no leeway.
async fn node(nats: &Nats, extra: &[(&str, &str)]) -> NodeProc {
    let mut env = vec![
        ("SSE_AUTH__JWT__HS256_SECRET", SECRET),
        ("SSE_AUTH__JWT__LEEWAY_SECONDS", "0"),
    ];
    env.extend_from_slice(extra);
    NodeProc::start(&nats.url(), &env).await
}

/// An `Authorization` value for `token`.
pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn public_topics_need_no_token_private_ones_do() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "pub", None).await;
    create_private_topic(&js, "priv").await;
    let node = node(&nats, &[]).await;

    let mut open = SseClient::connect(&node.url("/v1/events?topic=pub"), None)
        .await
        .unwrap();
    open.ready().await;

    let (status, headers, body) = get_with(&node.url("/v1/events?topic=priv"), &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        headers["www-authenticate"].to_str().unwrap(),
        "Bearer realm=\"sse\""
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "missing_token");
    // A public topic next to a private one does not make the token optional.
    let (status, _, _) = get_with(&node.url("/v1/events?topic=pub&topic=priv"), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        node.metric("sse_auth_failures_total{reason=\"missing\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn tokens_are_read_from_header_cookie_and_query() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_private_topic(&js, "orders").await;
    let node = node(&nats, &[]).await;
    let token = hs256(grant(&["orders.alice.>"]));
    let url = node.url("/v1/events?topic=orders.alice.>");

    let header = bearer(&token);
    let cookie = format!("theme=dark; sse_token={token}");
    let query_url = format!("{url}&access_token={token}");
    let mut clients = vec![
        SseClient::connect_with(&url, &[("Authorization", &header)])
            .await
            .unwrap(),
        SseClient::connect_with(&url, &[("Cookie", &cookie)])
            .await
            .unwrap(),
        SseClient::connect_with(&query_url, &[]).await.unwrap(),
        // A browser on a site behind basic auth sends its `Basic`
        // credentials by itself, beside the cookie.
        SseClient::connect_with(
            &url,
            &[("Authorization", "Basic dXNlcjpwYXNz"), ("Cookie", &cookie)],
        )
        .await
        .unwrap(),
    ];
    for client in &mut clients {
        client.ready().await;
    }
    publish(&js, "orders.bob.1", "not for alice").await;
    publish(&js, "orders.alice.1", "for alice").await;
    for client in &mut clients {
        let events = client.take(1, T).await;
        assert_eq!(data_of(&events), ["for alice"]);
    }

    // The query parameter can be turned off.
    let strict = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_AUTH__JWT__HS256_SECRET", SECRET),
            ("SSE_AUTH__QUERY_PARAMETER", "false"),
        ],
    )
    .await;
    let (status, _, _) = get_with(
        &strict.url(&format!(
            "/v1/events?topic=orders.alice.>&access_token={token}"
        )),
        &[],
    )
    .await;
    assert_eq!(status, 401);
}

/// A site that set its token cookie for the host, then for the domain,
/// leaves the browser two cookies of the name, the old one first: the
/// stream opens with whichever grants it.
#[tokio::test]
async fn of_several_token_cookies_the_one_that_grants_the_stream_opens_it() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_private_topic(&js, "orders").await;
    let node = node(&nats, &[]).await;
    let expired = hs256(json!({ "exp": now() - 60, "sse.subscribe": ["orders.alice.>"] }));
    let valid = hs256(grant(&["orders.alice.>"]));
    let narrow = hs256(grant(&["orders.alice.9"]));
    let url = node.url("/v1/events?topic=orders.alice.>");

    let cookies = format!("sse_token={expired}; theme=dark; sse_token={valid}");
    let mut client = SseClient::connect_with(&url, &[("Cookie", &cookies)])
        .await
        .unwrap();
    client.ready().await;
    publish(&js, "orders.alice.1", "for alice").await;
    assert_eq!(data_of(&client.take(1, T).await), ["for alice"]);

    // None grants it: a valid token's missing grant is the answer, over
    // another's expiry; with only expired ones, the expiry.
    for (cookies, status, code) in [
        (
            format!("sse_token={expired}; sse_token={narrow}"),
            403,
            "forbidden",
        ),
        (
            format!("sse_token={expired}; sse_token={expired}"),
            401,
            "token_expired",
        ),
    ] {
        let (got, _, body) = get_with(&url, &[("Cookie", &cookies)]).await;
        assert_eq!(got, status, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], code, "{body}");
    }
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_bearer_challenge() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_private_topic(&js, "vault").await;
    let node = node(
        &nats,
        &[
            ("SSE_AUTH__JWT__AUDIENCE", "sse"),
            ("SSE_AUTH__JWT__ISSUER", "https://issuer.example"),
        ],
    )
    .await;
    let good = |extra: Value| {
        let mut claims = json!({
            "exp": now() + 300,
            "aud": "sse",
            "iss": "https://issuer.example",
            "sse.subscribe": ["vault"],
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let url = node.url("/v1/events?topic=vault");
    // The well-formed token works, so each case below fails for one reason.
    let ok = hs256(good(json!({})));
    let (status, _, body) = get_with(&url, &[("Authorization", &bearer(&ok))]).await;
    assert_eq!(status, 200, "{body}");

    let rsa = encode(
        &Header::new(Algorithm::RS256),
        &good(json!({})),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    // `{"alg":"none","typ":"JWT"}` with valid claims and no signature.
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64url(&serde_json::to_vec(&good(json!({}))).unwrap())
    );
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "expired",
            hs256(good(json!({"exp": now() - 5}))),
            "token_expired",
            "expired",
        ),
        (
            "not yet valid",
            hs256(good(json!({"nbf": now() + 120}))),
            "invalid_token",
            "not_yet_valid",
        ),
        (
            "wrong key",
            hs256_with("another-secret-another-secret-12", good(json!({}))),
            "invalid_token",
            "signature",
        ),
        ("alg none", none, "invalid_token", "algorithm"),
        ("algorithm without a key", rsa, "invalid_token", "algorithm"),
        (
            "wrong audience",
            hs256(good(json!({"aud": "billing"}))),
            "invalid_token",
            "audience",
        ),
        (
            "wrong issuer",
            hs256(good(json!({"iss": "https://evil.example"}))),
            "invalid_token",
            "issuer",
        ),
        (
            "no exp",
            hs256(
                json!({"aud": "sse", "iss": "https://issuer.example", "sse.subscribe": ["vault"]}),
            ),
            "invalid_token",
            "malformed",
        ),
        ("garbage", "not.a.jwt".into(), "invalid_token", "malformed"),
    ];
    for (what, token, code, reason) in cases {
        let before = node
            .metric(&format!("sse_auth_failures_total{{reason=\"{reason}\"}}"))
            .await;
        let (status, headers, body) = get_with(&url, &[("Authorization", &bearer(&token))]).await;
        assert_eq!(status, 401, "{what}: {body}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer realm=\"sse\", error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], code, "{what}");
        let after = node
            .metric(&format!("sse_auth_failures_total{{reason=\"{reason}\"}}"))
            .await;
        assert_eq!(after, before + 1.0, "{what}");
    }
    // Not a bearer token at all.
    let (status, _, _) = get_with(&url, &[("Authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn grants_narrower_than_the_request_get_403() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_private_topic(&js, "orders").await;
    create_private_topic(&js, "news").await;
    create_topic(&js, "weather", None).await;
    let node = node(&nats, &[]).await;
    let token = hs256(grant(&["orders.alice.>", "news.*"]));
    let auth = bearer(&token);
    let status_of = |query: &'static str| {
        let url = node.url(&format!("/v1/events?{query}"));
        let auth = auth.clone();
        async move {
            let (status, headers, body) = get_with(&url, &[("Authorization", &auth)]).await;
            (status, headers, body)
        }
    };
    for query in [
        "topic=orders.alice.1",
        "topic=orders.alice.>",
        "topic=orders.alice.*",
        "topic=news.x",
        "topic=news.*",
        "topic=orders.alice.1&topic=news.y&topic=weather",
    ] {
        let (status, _, body) = status_of(query).await;
        assert_eq!(status, 200, "{query}: {body}");
    }
    for (query, refused) in [
        ("topic=orders.>", "orders.>"),
        ("topic=orders", "orders"),
        ("topic=orders.bob.1", "orders.bob.1"),
        ("topic=orders.alice", "orders.alice"),
        ("topic=news.>", "news.>"),
        ("topic=news", "news"),
        ("topic=news.x&topic=orders.*.1", "orders.*.1"),
    ] {
        let (status, headers, body) = status_of(query).await;
        assert_eq!(status, 403, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "forbidden");
        assert!(
            body["message"].as_str().unwrap().contains(refused),
            "{body}"
        );
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
    }
    assert_eq!(
        node.metric("sse_auth_failures_total{reason=\"forbidden\"}")
            .await,
        7.0
    );
}

#[tokio::test]
async fn rs256_es256_and_jwks_keys_verify() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_private_topic(&js, "keys").await;
    let dir = tempfile::tempdir().unwrap();
    let rsa_file = dir.path().join("rs256.pem");
    std::fs::write(&rsa_file, RSA_PUBLIC).unwrap();
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let jwks_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // An uncompressed P-256 point: 0x04, then x and y.
    let point = jwks_key.public_key_raw();
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": base64url(&point[1..33]), "y": base64url(&point[33..65]),
    }]});
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    let node = NodeProc::start(
        &nats.url(),
        &[
            (
                "SSE_AUTH__JWT__RS256_PUBLIC_KEY_FILE",
                rsa_file.to_str().unwrap(),
            ),
            ("SSE_AUTH__JWT__ES256_PUBLIC_KEY_PEM", &es.public_key_pem()),
            ("SSE_AUTH__JWT__JWKS_FILE", jwks_file.to_str().unwrap()),
        ],
    )
    .await;
    let claims = grant(&["keys"]);
    let rsa = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    let es_token = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let mut jwks_header = Header::new(Algorithm::ES256);
    jwks_header.kid = Some("k1".into());
    let jwks_token = encode(
        &jwks_header,
        &claims,
        &EncodingKey::from_ec_pem(jwks_key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let url = node.url("/v1/events?topic=keys");
    for (what, token) in [("rs256", &rsa), ("es256", &es_token), ("jwks", &jwks_token)] {
        let (status, _, body) = get_with(&url, &[("Authorization", &bearer(token))]).await;
        assert_eq!(status, 200, "{what}: {body}");
    }
    // HS256 has no key on this node; a token signed with the RSA public key
    // as an HMAC secret (the classic confusion attack) is refused.
    let confused = hs256_with(RSA_PUBLIC, claims.clone());
    let (status, _, _) = get_with(&url, &[("Authorization", &bearer(&confused))]).await;
    assert_eq!(status, 401);
    // A JWKS token naming an unknown kid is refused.
    jwks_header.kid = Some("k2".into());
    let unknown = encode(
        &jwks_header,
        &claims,
        &EncodingKey::from_ec_pem(jwks_key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let (status, _, _) = get_with(&url, &[("Authorization", &bearer(&unknown))]).await;
    assert_eq!(status, 401);
    // With the JWKS keys alone, the refusal says the kid is unknown (a key
    // rotated in at the issuer that the node has not read), not that the
    // algorithm is not accepted.
    let jwks_only = NodeProc::start(
        &nats.url(),
        &[("SSE_AUTH__JWT__JWKS_FILE", jwks_file.to_str().unwrap())],
    )
    .await;
    let url = jwks_only.url("/v1/events?topic=keys");
    let (status, _, body) = get_with(&url, &[("Authorization", &bearer(&unknown))]).await;
    assert_eq!(status, 401);
    assert!(body.contains("kid names no key"), "{body}");
    assert_eq!(
        jwks_only
            .metric("sse_auth_failures_total{reason=\"unknown_key\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_stream_closes_when_its_token_expires_and_resumes_with_a_fresh_one() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_private_topic(&js, "ledger").await;
    let node = node(&nats, &[]).await;
    let url = node.url("/v1/events?topic=ledger");
    // Valid for 4 to 5 s: room for the events below on a busy machine.
    let short = hs256(json!({"exp": now() + 5, "sse.subscribe": ["ledger"]}));
    let mut client = SseClient::connect_with(&url, &[("Authorization", &bearer(&short))])
        .await
        .unwrap();
    client.ready().await;
    publish(&js, "ledger", "one").await;
    publish(&js, "ledger.x", "two").await;
    let first = client.take(2, T).await;
    assert_eq!(data_of(&first), ["one", "two"]);
    let opened = std::time::Instant::now();
    let rest = client.until_closed(T).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(opened.elapsed() < Duration::from_secs(7));
    eventually(T, "the close to be counted", || async {
        let closed = node
            .metric("sse_connections_closed_total{reason=\"token_expired\"}")
            .await;
        (closed == 1.0).then_some(())
    })
    .await;
    // Events published while the client was away, then a fresh token.
    publish(&js, "ledger", "three").await;
    publish(&js, "ledger.y", "four").await;
    let (status, _, _) = get_with(
        &url,
        &[
            ("Authorization", &bearer(&short)),
            ("Last-Event-ID", &client.last_id),
        ],
    )
    .await;
    assert_eq!(status, 401, "the old token is refused");
    let fresh = hs256(grant(&["ledger"]));
    let mut resumed = SseClient::connect_with(
        &url,
        &[
            ("Authorization", &bearer(&fresh)),
            ("Last-Event-ID", &client.last_id),
        ],
    )
    .await
    .unwrap();
    let events = resumed.take(2, T).await;
    assert_eq!(data_of(&events), ["three", "four"]);
    publish(&js, "ledger", "five").await;
    assert_eq!(data_of(&resumed.take(1, T).await), ["five"]);
}

/// A token that expires while its node drains ends its stream at its
/// expiry, not at the stream's slot in the drain window (anywhere in nine
/// tenths of it, here 27 s).
#[tokio::test]
async fn a_token_that_expires_in_a_drain_ends_its_stream_on_time() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_private_topic(&js, "vault").await;
    let node = node(&nats, &[("SSE_SHUTDOWN__DRAIN_SECONDS", "30")]).await;
    let url = node.url("/v1/events?topic=vault");
    let exp = now() + 3;
    let token = bearer(&hs256(json!({"exp": exp, "sse.subscribe": ["vault"]})));
    // Four streams: all four slots falling before the expiry would be a
    // chance of about one in ten thousand.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = SseClient::connect_with(&url, &[("Authorization", &token)])
            .await
            .unwrap();
        client.ready().await;
        clients.push(client);
    }
    node.terminate();
    for client in &mut clients {
        client
            .until_closed(Duration::from_secs(10))
            .await
            .expect("the stream to end at its token's expiry, within the drain");
    }
    let ended = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        ended < exp as f64 + 2.0,
        "ended {:.1} s past exp",
        ended - exp as f64
    );
}

#[tokio::test]
async fn a_topic_made_private_cuts_its_anonymous_clients() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "flip", None).await;
    let node = node(&nats, &[("SSE_NATS__TOPIC_REFRESH_SECONDS", "1")]).await;
    let url = node.url("/v1/events?topic=flip");
    let mut anonymous = SseClient::connect(&url, None).await.unwrap();
    anonymous.ready().await;
    let mut config = js
        .get_stream("SSE_flip")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config
        .metadata
        .insert("sse.access".into(), "private".into());
    js.update_stream(config).await.unwrap();
    let rest = anonymous.until_closed(T).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    eventually(T, "the topic to turn private", || async {
        let (status, _, _) = get_with(&url, &[]).await;
        (status == 401).then_some(())
    })
    .await;
    let token = hs256(grant(&["flip"]));
    let (status, _, _) = get_with(&url, &[("Authorization", &bearer(&token))]).await;
    assert_eq!(status, 200);
}

/// Unpadded base64url.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
