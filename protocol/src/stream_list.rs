//! Every stream's info, listed page by page so that the listing ends when
//! NATS servers are down (the `nats` feature).
//!
//! JetStream's `STREAM.LIST` leaves out of each page the streams whose
//! servers do not answer. async-nats's `streams()` moves on by the number
//! of streams a page held, so with a server down each next page starts too
//! early: it asks again for streams already listed, and a listing holds
//! some twice. Here each page is taken by its size.

/// Every stream's info JetStream's listing gives; those whose servers do
/// not answer are left out.
pub async fn stream_infos(
    js: &async_nats::jetstream::Context,
) -> Result<Vec<async_nats::jetstream::stream::Info>, String> {
    let mut infos = Vec::new();
    let mut offset = 0u64;
    loop {
        let page: serde_json::Value = js
            .request("STREAM.LIST", &serde_json::json!({ "offset": offset }))
            .await
            .map_err(|err| format!("request failed: {err}"))?;
        if let Some(error) = page.get("error") {
            return Err(format!("jetstream refused the listing: {error}"));
        }
        match &page["streams"] {
            serde_json::Value::Null => {}
            streams => infos.extend(
                serde_json::from_value::<Vec<async_nats::jetstream::stream::Info>>(streams.clone())
                    .map_err(|err| err.to_string())?,
            ),
        }
        let limit = page["limit"]
            .as_u64()
            .filter(|&limit| limit > 0)
            .unwrap_or(256);
        offset += limit;
        if offset >= page["total"].as_u64().unwrap_or(0) {
            return Ok(infos);
        }
    }
}
