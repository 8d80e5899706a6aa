//! HTTP/2 streams whose client keeps their window shut are reset.
//!
//! Over HTTP/1.1 a client that stops reading fills its socket, and the
//! socket's write stall (`delivery.write_stall_seconds`) ends the
//! connection. Over HTTP/2 a client may stop reading one stream while the
//! others on its connection flow: the socket takes bytes, and hyper, which
//! holds the stream's next chunk until the stream's flow-control window
//! opens, does not ask the response for more meanwhile, so nothing of the
//! node's runs for that stream again. hyper runs each stream as a task
//! of its own through the executor it is given; [`StallExecutor`] wraps
//! each such task in [`Watched`], which drops it once the stream's
//! response has had a chunk held for the stall limit. Dropping the task
//! drops the stream, which h2 resets (`RST_STREAM` with `CANCEL`); the
//! client resumes from its cursor as after any other close.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// What a stream's response tells its task's [`Watched`]: since when a
/// chunk it gave hyper has waited for the stream's window.
#[derive(Debug, Default)]
pub struct StreamWatch {
    /// Milliseconds since [`epoch`] plus one; zero while no chunk waits.
    held_since: AtomicU64,
}

impl StreamWatch {
    /// The response handed hyper a chunk; it waits until hyper asks for
    /// the next one ([`Self::asked`]).
    pub fn handed(&self) {
        let since = epoch().elapsed().as_millis() as u64 + 1;
        self.held_since.store(since, Ordering::Relaxed);
    }

    /// hyper asks the response for more: nothing it was given waits.
    pub fn asked(&self) {
        self.held_since.store(0, Ordering::Relaxed);
    }

    /// Since when a chunk has waited, if one does.
    fn waiting_since(&self) -> Option<Instant> {
        match self.held_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(epoch() + Duration::from_millis(since - 1)),
        }
    }
}

/// The instant [`StreamWatch`] counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

thread_local! {
    /// The watch of the stream whose task this thread is polling, until
    /// the stream's response takes it ([`take_polled_stream_watch`]).
    static OFFERED: RefCell<Option<Arc<StreamWatch>>> = const { RefCell::new(None) };
}

/// The watch of the HTTP/2 stream being served on this thread, for the
/// response body made for it; `None` outside an HTTP/2 stream's task (an
/// HTTP/1.1 connection's responses are written by the connection's own
/// task, whose socket's write stall covers them).
pub fn take_polled_stream_watch() -> Option<Arc<StreamWatch>> {
    OFFERED.with(|offered| offered.borrow_mut().take())
}

/// Spawns hyper's HTTP/2 stream tasks on tokio, each [`Watched`].
#[derive(Clone, Debug)]
pub struct StallExecutor {
    /// How long a chunk may wait for its stream's window.
    pub limit: Duration,
}

impl<F> hyper::rt::Executor<F> for StallExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(Watched::Running {
            task,
            watch: Arc::default(),
            limit: self.limit,
            timer: None,
        });
    }
}

pin_project! {
    /// An HTTP/2 stream's task, dropped once its response has had a chunk
    /// waiting for the stream's window for `limit`.
    #[project = WatchedProj]
    enum Watched<F> {
        /// The stream is served.
        Running {
            #[pin]
            task: F,
            watch: Arc<StreamWatch>,
            limit: Duration,
            // Allocated only while a chunk waits.
            timer: Option<Pin<Box<Sleep>>>,
        },
        /// The stream's task ended, or was dropped.
        Done,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let WatchedProj::Running {
            task,
            watch,
            limit,
            timer,
        } = self.as_mut().project()
        else {
            return Poll::Ready(());
        };
        // Offered until the response takes it: one reference is ours.
        let offer = Arc::strong_count(watch) == 1;
        if offer {
            OFFERED.with(|offered| *offered.borrow_mut() = Some(watch.clone()));
        }
        let polled = task.poll(cx);
        if offer {
            OFFERED.with(|offered| offered.borrow_mut().take());
        }
        if polled.is_pending() {
            let Some(since) = watch.waiting_since() else {
                *timer = None;
                return Poll::Pending;
            };
            let deadline = since + *limit;
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            debug!(
                limit = ?limit,
                "resetting an HTTP/2 stream whose window stayed shut"
            );
        }
        // Dropped in place; the stream's response goes with it, and says
        // why it ended.
        self.set(Watched::Done);
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_whose_chunk_waits_too_long_is_dropped_and_one_asked_again_is_not() {
        let limit = Duration::from_secs(2);
        let watch = Arc::new(StreamWatch::default());
        // A task that holds a chunk for ever, as hyper does for a stream
        // whose window is shut.
        let watched = Watched::Running {
            task: std::future::pending::<()>(),
            watch: watch.clone(),
            limit,
            timer: None,
        };
        watch.handed();
        let started = Instant::now();
        watched.await;
        // The wait is counted in whole milliseconds.
        assert!(started.elapsed() + Duration::from_millis(1) >= limit);

        // One whose chunks are taken keeps going.
        let watch = Arc::new(StreamWatch::default());
        let mut watched = Box::pin(Watched::Running {
            task: std::future::pending::<()>(),
            watch: watch.clone(),
            limit,
            timer: None,
        });
        for _ in 0..5 {
            watch.handed();
            let waited = tokio::time::timeout(limit / 2, watched.as_mut()).await;
            assert!(waited.is_err(), "dropped with its chunks taken in time");
            watch.asked();
        }
        let idle = tokio::time::timeout(limit * 3, watched.as_mut()).await;
        assert!(idle.is_err(), "dropped while nothing waited");
    }

    #[tokio::test]
    async fn the_response_made_in_a_watched_task_takes_its_watch() {
        let (sent, taken) = tokio::sync::oneshot::channel();
        let executor = StallExecutor {
            limit: Duration::from_secs(1),
        };
        hyper::rt::Executor::execute(&executor, async move {
            let _ = sent.send(take_polled_stream_watch().is_some());
        });
        assert!(taken.await.unwrap());
        assert!(take_polled_stream_watch().is_none());
    }
}
