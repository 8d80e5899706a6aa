//! The node's own split of its delivery lag, read from its `/metrics`.
//!
//! A node times each live event from its JetStream timestamp twice: when
//! its topic feed reads it (`sse_feed_read_lag_seconds`) and when it is
//! written to a client's socket (`sse_delivery_lag_seconds`: every event a
//! feed's writer writes to parked sockets, timed to the end of its pass;
//! for a stream's own writes, one batch in eight by its oldest event).
//! Scraped before and after a run's event phase, the difference of the two
//! histograms is what that run's events saw. Prometheus histograms keep
//! only bucket counts, so a quantile is known to lie within one bucket: the
//! report gives that bucket's upper bound, never a figure finer than the
//! buckets.

use std::{net::SocketAddr, time::Duration};

use tokio_rustls::TlsConnector;

/// The histogram of the time to the feed's read.
pub const FEED_READ: &str = "sse_feed_read_lag_seconds";
/// The histogram of the time to the write on a client's socket.
pub const WRITTEN: &str = "sse_delivery_lag_seconds";

/// Cumulative counts of one histogram, by upper bound in seconds, rising.
pub type Buckets = Vec<(f64, f64)>;

/// The counter of parked sockets given back because they did not take a
/// whole write: their client did not read fast enough.
pub const REFUSALS: &str = "sse_parked_refusals_total";

/// One node's scrape: [`FEED_READ`], [`WRITTEN`], and [`REFUSALS`] as a
/// one-bucket histogram; `None` if it did not answer.
pub type NodeScrape = Option<[Buckets; 3]>;

/// Cumulative counts of one histogram, by upper bound in seconds, in the
/// order of `/metrics` (rising, `+Inf` last). Empty when it is absent.
pub fn buckets(metrics: &str, name: &str) -> Buckets {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (bound, rest) = rest.split_once('"')?;
            let count = rest.rsplit(' ').next()?.parse().ok()?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count))
        })
        .collect()
}

/// What was observed between the scrapes `before` and `after` of one node,
/// as cumulative counts. `None` when the scrapes do not match (the node
/// gone, or restarted with other buckets).
pub fn between(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<Buckets> {
    if after.is_empty() || (!before.is_empty() && before.len() != after.len()) {
        return None;
    }
    Some(
        after
            .iter()
            .enumerate()
            .map(|(i, (bound, count))| (*bound, count - before.get(i).map_or(0.0, |b| b.1)))
            .collect(),
    )
}

/// The bucket `(lower, upper]`, in seconds, holding quantile `q` of the
/// cumulative counts `observed`, with how many there are. `None` when
/// there are none.
pub fn quantile_bucket(observed: &[(f64, f64)], q: f64) -> Option<((f64, f64), f64)> {
    let total = observed.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = (q * total).ceil().max(1.0);
    let mut lower = 0.0;
    for (upper, count) in observed {
        if *count >= rank {
            return Some(((lower, *upper), total));
        }
        lower = *upper;
    }
    None
}

/// Adds `extra`'s counts into `into`, bucket by bucket (several nodes).
pub fn merge(into: &mut Buckets, extra: &[(f64, f64)]) {
    if into.is_empty() {
        into.extend_from_slice(extra);
    } else if into.len() == extra.len() {
        for (a, b) in into.iter_mut().zip(extra) {
            a.1 += b.1;
        }
    }
}

/// The value of a counter without labels; `None` when it is absent.
pub fn counter(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// How long a node may take to answer a scrape before it counts as not
/// answering: a run is never held up by its measurement.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Both histograms ([`FEED_READ`], [`WRITTEN`]) and [`REFUSALS`] of each
/// node at `addrs` (over TLS with `tls`); `None` for a node that does not
/// answer in time.
pub async fn scrape(addrs: &[SocketAddr], tls: Option<&TlsConnector>) -> Vec<NodeScrape> {
    let mut nodes = Vec::with_capacity(addrs.len());
    for addr in addrs {
        nodes.push(metrics_of(*addr, tls).await.map(|text| {
            let refusals = counter(&text, REFUSALS)
                .map(|n| vec![(f64::INFINITY, n)])
                .unwrap_or_default();
            [buckets(&text, FEED_READ), buckets(&text, WRITTEN), refusals]
        }));
    }
    nodes
}

/// The `/metrics` text of the node at `addr`; `None` if it does not answer
/// in time.
async fn metrics_of(addr: SocketAddr, tls: Option<&TlsConnector>) -> Option<String> {
    tokio::time::timeout(
        SCRAPE_TIMEOUT,
        crate::scenario::http_get(addr, "/metrics", tls),
    )
    .await
    .ok()
    .and_then(Result::ok)
}

/// The gauge of streams parked on a feed's writer.
pub const PARKED: &str = "sse_streams_parked";

/// [`PARKED`] summed over the nodes at `addrs`; `None` when none answers.
pub async fn parked(addrs: &[SocketAddr], tls: Option<&TlsConnector>) -> Option<f64> {
    let mut total = None;
    for addr in addrs {
        if let Some(n) = metrics_of(*addr, tls)
            .await
            .and_then(|t| counter(&t, PARKED))
        {
            *total.get_or_insert(0.0) += n;
        }
    }
    total
}

/// What every node that answered both scrapes observed in between, merged:
/// [`FEED_READ`], [`WRITTEN`], [`REFUSALS`].
pub fn observed(before: &[NodeScrape], after: &[NodeScrape]) -> [Buckets; 3] {
    let mut merged = [Vec::new(), Vec::new(), Vec::new()];
    for (b, a) in before.iter().zip(after) {
        if let (Some(b), Some(a)) = (b, a) {
            for k in 0..3 {
                if let Some(d) = between(&b[k], &a[k]) {
                    merge(&mut merged[k], &d);
                }
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP sse_feed_read_lag_seconds x\n\
        sse_feed_read_lag_seconds_bucket{le=\"0.005\"} 10\n\
        sse_feed_read_lag_seconds_bucket{le=\"0.01\"} 10\n\
        sse_feed_read_lag_seconds_bucket{le=\"0.025\"} 10\n\
        sse_feed_read_lag_seconds_bucket{le=\"+Inf\"} 10\n\
        sse_feed_read_lag_seconds_sum 0.01\n\
        sse_delivery_lag_seconds_bucket{le=\"0.005\"} 3\n";

    const AFTER: &str = "sse_feed_read_lag_seconds_bucket{le=\"0.005\"} 960\n\
        sse_feed_read_lag_seconds_bucket{le=\"0.01\"} 1005\n\
        sse_feed_read_lag_seconds_bucket{le=\"0.025\"} 1010\n\
        sse_feed_read_lag_seconds_bucket{le=\"+Inf\"} 1010\n";

    #[test]
    fn buckets_are_read_by_name_only() {
        let read = buckets(BEFORE, FEED_READ);
        assert_eq!(
            read,
            vec![
                (0.005, 10.0),
                (0.01, 10.0),
                (0.025, 10.0),
                (f64::INFINITY, 10.0)
            ]
        );
        assert_eq!(buckets(BEFORE, WRITTEN), vec![(0.005, 3.0)]);
        assert!(buckets(BEFORE, "sse_other").is_empty());
    }

    #[test]
    fn the_quantile_lies_in_the_bucket_of_what_the_run_added() {
        let run = between(&buckets(BEFORE, FEED_READ), &buckets(AFTER, FEED_READ)).unwrap();
        // 1,000 observed in the run: 950 up to 5 ms, 45 more up to 10 ms,
        // 5 more up to 25 ms.
        assert_eq!(quantile_bucket(&run, 0.5), Some(((0.0, 0.005), 1000.0)));
        assert_eq!(quantile_bucket(&run, 0.99), Some(((0.005, 0.01), 1000.0)));
        assert_eq!(quantile_bucket(&run, 0.999), Some(((0.01, 0.025), 1000.0)));
        // Counted from nothing, the 10 earlier observations are in too.
        let all = between(&[], &buckets(AFTER, FEED_READ)).unwrap();
        assert_eq!(quantile_bucket(&all, 0.5), Some(((0.0, 0.005), 1010.0)));
    }

    #[test]
    fn nothing_observed_or_scrapes_that_disagree_give_no_quantile() {
        let before = buckets(BEFORE, FEED_READ);
        let nothing = between(&before, &before).unwrap();
        assert_eq!(quantile_bucket(&nothing, 0.99), None);
        assert_eq!(between(&before, &before[..2]), None);
        assert_eq!(between(&before, &[]), None);
    }

    #[test]
    fn a_node_that_missed_a_scrape_is_left_out() {
        let refused = |n| vec![(f64::INFINITY, n)];
        let before = [
            Some([buckets(BEFORE, FEED_READ), Vec::new(), refused(2.0)]),
            Some([buckets(BEFORE, FEED_READ), Vec::new(), refused(5.0)]),
        ];
        let after = [
            Some([buckets(AFTER, FEED_READ), Vec::new(), refused(7.0)]),
            None,
        ];
        let [read, written, refusals] = observed(&before, &after);
        assert_eq!(read.last(), Some(&(f64::INFINITY, 1000.0)));
        assert!(written.is_empty());
        assert_eq!(refusals, refused(5.0));
    }

    #[test]
    fn a_counter_is_read_by_its_whole_name() {
        let text = "# TYPE sse_parked_refusals_total counter\n\
            sse_parked_refusals_total_other 9\n\
            sse_parked_refusals_total 42\n";
        assert_eq!(counter(text, REFUSALS), Some(42.0));
        assert_eq!(counter(text, "sse_missing_total"), None);
    }

    #[test]
    fn nodes_merge_bucket_by_bucket() {
        let mut merged = Vec::new();
        merge(&mut merged, &buckets(AFTER, FEED_READ));
        merge(&mut merged, &buckets(BEFORE, FEED_READ));
        assert_eq!(merged[0], (0.005, 970.0));
        assert_eq!(merged[3], (f64::INFINITY, 1020.0));
    }
}
