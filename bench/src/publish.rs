//! Publishers: JetStream (for sse-node) and HTTP `POST` (for Nchan).
//!
//! Both keep publish order per subject, so a subscriber's counters arrive
//! in order unless the server reorders them. JetStream publishes are
//! pipelined: up to [`WINDOW`] acknowledgements outstanding, checked in
//! order, each one timed (publish to acknowledgement: the store's share of
//! the latency). HTTP publishes are pipelined on one keep-alive connection,
//! up to [`WINDOW`] requests in flight, each response read and checked.
//!
//! [`Publisher::publish_by`] never waits for room in the window past a
//! deadline: a server that slows its publisher down gets fewer events, not
//! a longer publishing phase.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use async_nats::{
    Subject,
    jetstream::{
        self,
        context::PublishAckFuture,
        stream::{Config, StorageType},
    },
};
use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedWriteHalf},
    sync::Semaphore,
    task::JoinHandle,
    time::Instant,
};

use crate::{
    histogram::Histogram,
    sse::{Body, parse_head},
};

/// Publishes in flight at once.
pub const WINDOW: usize = 256;

/// Where events go.
pub enum Publisher {
    /// JetStream publish to one subject per benchmark subject.
    Nats {
        /// The JetStream context (boxed: it is large).
        js: Box<jetstream::Context>,
        /// NATS subject per benchmark subject.
        subjects: Vec<Subject>,
        /// Acknowledgements not yet checked, oldest first; each waits in
        /// a task of its own, so its time is taken when it arrives.
        acks: VecDeque<JoinHandle<anyhow::Result<()>>>,
        /// Publish-to-acknowledgement times, µs.
        ack_times: Arc<Mutex<Histogram>>,
    },
    /// HTTP `POST` on one pipelined connection.
    Http(HttpPublisher),
}

impl Publisher {
    /// A JetStream publisher; creates each topic's stream (`SSE_<topic>`,
    /// subjects `<prefix>.<topic>` and `<prefix>.<topic>.>`, read with a
    /// token when `private`, kept in memory when `in_memory`, republishing
    /// each event to the live subjects when `republish`, on `replicas`
    /// servers of a cluster) if missing.
    #[allow(clippy::too_many_arguments)]
    pub async fn nats(
        url: &str,
        prefix: &str,
        topics: &[String],
        subjects: &[String],
        private: bool,
        in_memory: bool,
        republish: bool,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("cannot connect to nats at {url}"))?;
        let js = jetstream::new(client);
        for topic in topics {
            js.get_or_create_stream(Config {
                name: format!("SSE_{topic}"),
                subjects: vec![format!("{prefix}.{topic}"), format!("{prefix}.{topic}.>")],
                metadata: if private {
                    [("sse.access".to_owned(), "private".to_owned())].into()
                } else {
                    Default::default()
                },
                storage: if in_memory {
                    StorageType::Memory
                } else {
                    StorageType::File
                },
                // As the admin service makes a topic's stream.
                allow_direct: true,
                republish: republish.then(|| sse_protocol::topic::live_republish(prefix)),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create stream for topic {topic}"))?;
            if replicas > 1 {
                wait_for_leader(&js, &format!("SSE_{topic}")).await?;
            }
        }
        Ok(Self::Nats {
            js: Box::new(js),
            subjects: subjects
                .iter()
                .map(|s| Subject::from(format!("{prefix}.{s}")))
                .collect(),
            acks: VecDeque::with_capacity(WINDOW),
            ack_times: Arc::default(),
        })
    }

    /// An HTTP publisher posting to `<path>?id=<channel>` at `addr`.
    pub async fn http(addr: SocketAddr, path: &str, channels: &[String]) -> anyhow::Result<Self> {
        Ok(Self::Http(
            HttpPublisher::connect(addr, path, channels).await?,
        ))
    }

    /// Publishes `payload` to benchmark subject `subject`.
    pub async fn publish(&mut self, subject: usize, payload: Vec<u8>) -> anyhow::Result<()> {
        self.publish_by(subject, payload, None).await?;
        Ok(())
    }

    /// Publishes `payload` to benchmark subject `subject` if the window has
    /// room for it by `deadline`; `false` when the deadline passed first,
    /// and then nothing was sent.
    pub async fn publish_by(
        &mut self,
        subject: usize,
        payload: Vec<u8>,
        deadline: Option<Instant>,
    ) -> anyhow::Result<bool> {
        match self {
            Self::Nats {
                js,
                subjects,
                acks,
                ack_times,
            } => {
                if acks.len() >= WINDOW
                    && let Some(oldest) = acks.front_mut()
                {
                    let checked = match deadline {
                        Some(at) => match tokio::time::timeout_at(at, oldest).await {
                            Ok(checked) => checked,
                            Err(_) => return Ok(false),
                        },
                        None => oldest.await,
                    };
                    acks.pop_front();
                    checked.context("ack task")??;
                }
                let sent = Instant::now();
                let ack: PublishAckFuture = js
                    .publish(subjects[subject].clone(), Bytes::from(payload))
                    .await
                    .context("jetstream publish failed")?;
                let times = ack_times.clone();
                acks.push_back(tokio::spawn(async move {
                    ack.await.context("jetstream refused a publish")?;
                    let us = sent.elapsed().as_micros() as u64;
                    times
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .record(us);
                    Ok(())
                }));
                Ok(true)
            }
            Self::Http(http) => http.publish(subject, &payload, deadline).await,
        }
    }

    /// Publish-to-acknowledgement times so far (JetStream only).
    pub fn ack_times(&self) -> Option<Histogram> {
        match self {
            Self::Nats { ack_times, .. } => ack_times.lock().ok().map(|h| h.clone()),
            Self::Http(_) => None,
        }
    }

    /// Waits until every publish so far is acknowledged.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Nats { acks, .. } => {
                while let Some(ack) = acks.pop_front() {
                    ack.await.context("ack task")??;
                }
                Ok(())
            }
            Self::Http(http) => http.flush().await,
        }
    }

    /// The current epoch of topic `topic`'s stream (sse-node's id part).
    pub async fn epoch(&self, topic: &str) -> anyhow::Result<String> {
        let Self::Nats { js, .. } = self else {
            bail!("only JetStream streams have an epoch");
        };
        let mut stream = js.get_stream(format!("SSE_{topic}")).await?;
        let info = stream.info().await?;
        Ok(sse_protocol::cursor::epoch_from_unix_nanos(
            info.created.unix_timestamp_nanos(),
        ))
    }
}

/// Pipelined HTTP publishing on one keep-alive connection.
pub struct HttpPublisher {
    writer: OwnedWriteHalf,
    requests: Vec<Vec<u8>>,
    window: Arc<Semaphore>,
    reader: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl HttpPublisher {
    async fn connect(addr: SocketAddr, path: &str, channels: &[String]) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (mut read, writer) = stream.into_split();
        let window = Arc::new(Semaphore::new(WINDOW));
        let returned = window.clone();
        let reader = tokio::spawn(async move {
            let mut raw = Vec::with_capacity(8192);
            loop {
                let head = loop {
                    if let Some(head) = parse_head(&raw) {
                        break head;
                    }
                    if read.read_buf(&mut raw).await? == 0 {
                        return Ok(());
                    }
                };
                if !(200..300).contains(&head.status) {
                    bail!("publish refused with status {}", head.status);
                }
                raw.drain(..head.len);
                if head.chunked {
                    let mut body = Body::for_head(&head);
                    let mut sink = Vec::new();
                    while body != Body::Done {
                        let used = body.decode(&raw, &mut sink).map_err(anyhow::Error::msg)?;
                        raw.drain(..used);
                        if body != Body::Done && read.read_buf(&mut raw).await? == 0 {
                            return Ok(());
                        }
                    }
                } else {
                    let len = head.content_length.unwrap_or(0);
                    while raw.len() < len {
                        if read.read_buf(&mut raw).await? == 0 {
                            return Ok(());
                        }
                    }
                    raw.drain(..len);
                }
                returned.add_permits(1);
            }
        });
        let requests = channels
            .iter()
            .map(|c| format!("POST {path}?id={c} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: ").into_bytes())
            .collect();
        Ok(Self {
            writer,
            requests,
            window,
            reader,
        })
    }

    async fn publish(
        &mut self,
        channel: usize,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> anyhow::Result<bool> {
        if self.reader.is_finished() {
            bail!("the publish connection closed");
        }
        let permit = match deadline {
            Some(at) => match tokio::time::timeout_at(at, self.window.acquire()).await {
                Ok(permit) => permit?,
                Err(_) => return Ok(false),
            },
            None => self.window.acquire().await?,
        };
        permit.forget();
        let mut request = Vec::with_capacity(self.requests[channel].len() + payload.len() + 8);
        request.extend_from_slice(&self.requests[channel]);
        request.extend_from_slice(format!("{}\r\n\r\n", payload.len()).as_bytes());
        request.extend_from_slice(payload);
        self.writer.write_all(&request).await?;
        Ok(true)
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.window.available_permits() < WINDOW {
            if self.reader.is_finished() {
                bail!("the publish connection closed with requests in flight");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("publishes not acknowledged within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// Waits until the replicated stream `name` has a leader: until then its
/// publishes find no stream to answer them.
async fn wait_for_leader(js: &jetstream::Context, name: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leader = match js.get_stream(name).await {
            Ok(mut stream) => stream
                .info()
                .await
                .ok()
                .and_then(|info| info.cluster.as_ref()?.leader.clone()),
            Err(_) => None,
        };
        if leader.is_some() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "stream {name} has no leader after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
