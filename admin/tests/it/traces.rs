//! A publish through admin is traced: the caller's `traceparent` continues
//! into admin's `sse.publish` span, exported over OTLP/HTTP, and the event
//! carries that span's context to the nodes, whose delivery spans become
//! its children.

use std::{process::Command, time::Duration};

use axum::{Router, body::Bytes, extract::State, routing::post};
use serde_json::json;
use tokio::sync::mpsc;

use crate::support::{NatsServer, bounded, eventually, http_client_builder};

/// Kills the admin process when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_continues_the_callers_trace_and_passes_its_own_span_on() {
    bounded(async {
        let (posted, mut exports) = mpsc::unbounded_channel::<Bytes>();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector = listener.local_addr().unwrap();
        let app = Router::new()
            .route(
                "/v1/traces",
                post(
                    |State(posted): State<mpsc::UnboundedSender<Bytes>>, body: Bytes| async move {
                        let _ = posted.send(body);
                    },
                ),
            )
            .with_state(posted);
        tokio::spawn(async move { axum::serve(listener, app).await });

        let nats = NatsServer::start();
        let port = crate::ports::free_port();
        let _admin = Running(
            Command::new(env!("CARGO_BIN_EXE_sse-admin"))
                .env_remove("SSE_CONFIG")
                .env("SSE_ADMIN__TOKEN", "t")
                .env("SSE_NATS__URL", &nats.url)
                .env("SSE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .env("OTEL_SERVICE_NAME", "sse-admin-under-test")
                .env_remove("OTEL_TRACES_SAMPLER")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = http_client_builder().build().unwrap();
        eventually("admin ready", Duration::from_secs(20), || {
            let request = http.get(format!("{base}/readyz")).send();
            async move { request.await.ok()?.status().is_success().then_some(()) }
        })
        .await;
        let created = http
            .post(format!("{base}/v1/topics"))
            .bearer_auth("t")
            .json(&json!({"name": "traced"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);

        let trace_id = format!("{:032x}", fastrand::u128(1..));
        let caller_span = format!("{:016x}", fastrand::u64(1..));
        let published = http
            .post(format!("{base}/v1/topics/traced/events"))
            .bearer_auth("t")
            .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
            .json(&json!({"data": "hello"}))
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 200);

        // The event carries admin's span, in the caller's trace.
        let js = nats.jetstream().await;
        let stored = js
            .get_stream("SSE_traced")
            .await
            .unwrap()
            .get_raw_message(1)
            .await
            .unwrap();
        let carried = stored
            .headers
            .get("traceparent")
            .unwrap()
            .as_str()
            .to_owned();
        let parts: Vec<&str> = carried.split('-').collect();
        assert_eq!(parts.len(), 4, "{carried}");
        assert_eq!(parts[1], trace_id, "{carried}");
        assert_ne!(parts[2], caller_span, "admin's own span: {carried}");
        assert_eq!(parts[3], "01", "sampled, as its parent is: {carried}");

        // And admin exported that span.
        let wanted_trace = hex(&trace_id);
        let wanted_span = hex(parts[2]);
        let found = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(body) = exports.recv().await {
                let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
                if has(&wanted_trace) && has(&wanted_span) && has(b"sse.publish") {
                    return has(b"sse-admin-under-test");
                }
            }
            false
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "the sse.publish span, with admin's service name"
        );
    })
    .await;
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
