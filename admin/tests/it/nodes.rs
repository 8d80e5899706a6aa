//! The cluster view: nodes listed while their report is fresh, gone after
//! the TTL; subscribers summed into topics and metrics.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde_json::{Value, json};
use sse_protocol::node_report::{
    DEFAULT_NODES_BUCKET, DEFAULT_NODES_BUCKET_REPLICAS, NodeReport, NodesBucket, open_nodes_bucket,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::support::{Admin, NatsServer, bounded, eventually, test_config};

/// A node report as a node writes it (the shared [`NodeReport`]), reported
/// `age` ago.
pub(crate) fn report(id: &str, connections: u64, topics: Value, age: Duration) -> Value {
    let now = OffsetDateTime::now_utc();
    let report = NodeReport {
        id: id.to_owned(),
        address: format!("127.0.0.1:80{}", id.len()),
        version: "0.1.0".to_owned(),
        started_at: (now - Duration::from_secs(60)).format(&Rfc3339).unwrap(),
        reported_at: (now - age).format(&Rfc3339).unwrap(),
        connections,
        events_delivered: connections * 10,
        draining: false,
        topics: serde_json::from_value(topics).unwrap(),
        report_seconds: 5,
        report_age_seconds: None,
        clock_skew_seconds: None,
    };
    serde_json::to_value(report).unwrap()
}

/// Opens the bucket the way a node does.
pub(crate) async fn bucket(nats: &NatsServer, ttl: Duration) -> kv::Store {
    let js = nats.jetstream().await;
    let settings = NodesBucket {
        name: DEFAULT_NODES_BUCKET.to_owned(),
        ttl,
        replicas: DEFAULT_NODES_BUCKET_REPLICAS,
    };
    open_nodes_bucket(&js, &settings).await.unwrap()
}

pub(crate) async fn put(store: &kv::Store, report: &Value) {
    let id = report["id"].as_str().unwrap().to_owned();
    store
        .put(id, serde_json::to_vec(report).unwrap().into())
        .await
        .unwrap();
}

async fn node_ids(admin: &Admin) -> Vec<String> {
    let (status, list) = admin.call("GET", "/v1/nodes", None).await;
    assert_eq!(status, 200, "{list}");
    list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_live_while_fresh_and_drop_after_ttl() {
    bounded(async {
        let nats = NatsServer::start();
        // Long enough for every step below to see the fresh reports on a
        // busy machine.
        let ttl = Duration::from_secs(5);
        let admin =
            Admin::start_with(test_config(&nats.url, "[cluster]\nnode_ttl_seconds = 5")).await;
        // Admin creates the bucket with the TTL when it is missing.
        assert!(node_ids(&admin).await.is_empty());
        let js = nats.jetstream().await;
        let mut kv_stream = js.get_stream("KV_sse_nodes").await.unwrap();
        let info = kv_stream.info().await.unwrap();
        assert_eq!(info.config.max_age, ttl);
        assert_eq!(info.config.max_messages_per_subject, 1);

        let store = bucket(&nats, ttl).await;
        put(
            &store,
            &report("node-a", 3, json!({"orders": 2, "chat": 1}), Duration::ZERO),
        )
        .await;
        put(
            &store,
            &report("node-b", 4, json!({"orders": 4}), Duration::ZERO),
        )
        .await;
        // A node whose clock is 30 s behind wrote a report just now: its
        // age is NATS's, and the view shows its skew.
        put(
            &store,
            &report("node-behind", 0, json!({}), Duration::from_secs(30)),
        )
        .await;
        let (_, list) = admin.call("GET", "/v1/nodes", None).await;
        let behind = &list["nodes"][2];
        assert_eq!(behind["id"], "node-behind", "{list}");
        let skew = behind["clock_skew_seconds"].as_f64().unwrap();
        assert!((-32.0..=-28.0).contains(&skew), "{behind}");
        assert!(
            behind["report_age_seconds"].as_f64().unwrap() < 3.0,
            "{behind}"
        );
        assert!(
            list["nodes"][0]["clock_skew_seconds"]
                .as_f64()
                .unwrap()
                .abs()
                < 2.0,
            "{list}"
        );
        store.delete("node-behind").await.unwrap();

        assert_eq!(node_ids(&admin).await, ["node-a", "node-b"]);
        // Reading the view leaves nothing in NATS: it made a consumer on
        // the bucket each time, which NATS kept for 30 s.
        for _ in 0..5 {
            node_ids(&admin).await;
        }
        assert_eq!(kv_stream.info().await.unwrap().state.consumer_count, 0);
        let (_, list) = admin.call("GET", "/v1/nodes", None).await;
        let a = &list["nodes"][0];
        for field in [
            "id",
            "address",
            "version",
            "started_at",
            "reported_at",
            "connections",
            "events_delivered",
            "draining",
            "topics",
        ] {
            assert!(!a[field].is_null(), "{field} missing in {a}");
        }
        assert_eq!(a["connections"], 3);
        assert_eq!(list["ttl_seconds"], 5);

        // Subscribers are summed over live nodes, in topics and metrics.
        admin.create_topic(json!({"name": "orders"})).await;
        let (_, topic) = admin.call("GET", "/v1/topics/orders", None).await;
        assert_eq!(topic["subscribers"], 6);
        let metrics = admin.metrics().await;
        for line in [
            "sse_nodes_live 2",
            "sse_cluster_topic_subscribers{topic=\"orders\"} 6",
            "sse_topic_messages{topic=\"orders\"} 0",
            "sse_topic_bytes{topic=\"orders\"} 0",
        ] {
            assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
        }
        crate::metric_names::assert_total_names_only_counters(&metrics);
        let (_, overview) = admin.call_with("GET", "/v1/overview", None, None).await;
        assert_eq!(overview["connections"], 7);
        assert_eq!(overview["nodes_live"], 2);

        // A second replica, with nothing shared but NATS, shows the same.
        let replica =
            Admin::start_with(test_config(&nats.url, "[cluster]\nnode_ttl_seconds = 5")).await;
        assert_eq!(node_ids(&replica).await, ["node-a", "node-b"]);

        // node-b shuts down cleanly and deletes its entry; node-a dies.
        store.delete("node-b").await.unwrap();
        assert_eq!(node_ids(&admin).await, ["node-a"]);
        eventually("node-a expires", ttl * 3, || async {
            node_ids(&admin).await.is_empty().then_some(())
        })
        .await;
        let metrics = admin.metrics().await;
        assert!(metrics.contains("sse_nodes_live 0"), "{metrics}");
        assert!(
            metrics.contains("sse_cluster_topic_subscribers{topic=\"orders\"} 0"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_listed_but_left_out_of_every_sum() {
    bounded(async {
        let nats = NatsServer::start();
        let ttl = Duration::from_secs(60);
        let admin =
            Admin::start_with(test_config(&nats.url, "[cluster]\nnode_ttl_seconds = 60")).await;
        assert!(node_ids(&admin).await.is_empty());
        let store = bucket(&nats, ttl).await;
        // Reports every second, last stored over 3 s ago by NATS's clock:
        // killed, or cut off from NATS, its entry not expired yet. Its
        // own clock says it reported a minute from now: it counts for
        // nothing.
        let mut silent = report("node-s", 40, json!({"orders": 30}), Duration::ZERO);
        silent["report_seconds"] = json!(1);
        silent["reported_at"] = (OffsetDateTime::now_utc() + Duration::from_secs(60))
            .format(&Rfc3339)
            .unwrap()
            .into();
        put(&store, &silent).await;
        let overview = eventually("node-s silent", Duration::from_secs(10), || async {
            let (_, overview) = admin.call_with("GET", "/v1/overview", None, None).await;
            (overview["nodes_silent"] == 1).then_some(overview)
        })
        .await;
        assert_eq!(overview["nodes_live"], 0, "{overview}");
        put(
            &store,
            &report("node-a", 3, json!({"orders": 2}), Duration::ZERO),
        )
        .await;

        assert_eq!(node_ids(&admin).await, ["node-a", "node-s"]);
        // The overview is shared for a moment: one taken after node-a's report.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, overview) = admin.call_with("GET", "/v1/overview", None, None).await;
        assert_eq!(overview["nodes_live"], 1, "{overview}");
        assert_eq!(overview["nodes_silent"], 1, "{overview}");
        assert_eq!(overview["connections"], 3, "{overview}");
        admin.create_topic(json!({"name": "orders"})).await;
        let (_, topic) = admin.call("GET", "/v1/topics/orders", None).await;
        assert_eq!(topic["subscribers"], 2, "{topic}");
        let metrics = admin.metrics().await;
        for line in [
            "sse_nodes_live 1",
            "sse_cluster_topic_subscribers{topic=\"orders\"} 2",
        ] {
            assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
        }
    })
    .await;
}
