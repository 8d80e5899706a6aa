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
//!
//! h2 takes a whole chunk once the window has room for a byte of it, and
//! holds the rest where the task cannot see it; the response is then asked
//! for more as if the chunk had gone. A stream whose client stopped reading
//! is so seen held from its next chunk on, which comes at the latest with
//! its heartbeat (`http.heartbeat_seconds`): it is reset within the
//! heartbeat interval and the stall limit.
//!
//! The response tells the task what it did through a thread-local
//! ([`asked`], [`handed`]), not through state of its own: every byte an
//! idle stream's task holds is paid by every idle HTTP/2 stream, rounded
//! up to the task allocation's next size, and the task of a stream is a
//! few bytes under one.

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// How long a chunk may wait for its stream's window, in milliseconds:
/// the node's `delivery.write_stall_seconds`, one per process.
static LIMIT_MS: AtomicU64 = AtomicU64::new(20_000);

/// What the response of the stream whose task this thread polls did last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Not asked during this poll of the task.
    NotAsked,
    /// Asked for more: nothing it gave waits.
    Asked,
    /// Gave a chunk, and was not asked again: hyper holds it.
    Handed,
}

thread_local! {
    static LAST_STEP: Cell<Step> = const { Cell::new(Step::NotAsked) };
    // Set while a stream's task is dropped for its shut window.
    static RESETTING: Cell<bool> = const { Cell::new(false) };
}

/// Whether what is dropped on this thread now goes with a stream reset for
/// its shut window: a stream closed so counts as `slow`, as one whose
/// socket refused bytes does.
pub fn resetting_held_stream() -> bool {
    RESETTING.with(Cell::get)
}

/// A response body is asked for more (outside an HTTP/2 stream's task,
/// nobody reads it).
pub fn asked() {
    LAST_STEP.with(|step| step.set(Step::Asked));
}

/// A response body gave a chunk of data.
pub fn handed() {
    LAST_STEP.with(|step| step.set(Step::Handed));
}

/// Spawns hyper's HTTP/2 stream tasks on tokio, each [`Watched`].
#[derive(Clone, Debug)]
pub struct StallExecutor(());

impl StallExecutor {
    /// An executor whose streams may hold a chunk for `limit`; the limit
    /// is the process's, set here.
    pub fn new(limit: Duration) -> Self {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        LIMIT_MS.store(ms, Ordering::Relaxed);
        Self(())
    }
}

impl<F> hyper::rt::Executor<F> for StallExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(Watched::Running { task, held: None });
    }
}

pin_project! {
    /// An HTTP/2 stream's task, dropped once its response has had a chunk
    /// held for the limit.
    #[project = WatchedProj]
    enum Watched<F> {
        /// The stream is served.
        Running {
            #[pin]
            task: F,
            // Set while hyper holds a chunk: when it will have held it too
            // long.
            held: Option<Pin<Box<Sleep>>>,
        },
        /// The stream's task ended, or was dropped.
        Done,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let WatchedProj::Running { task, held } = self.as_mut().project() else {
            return Poll::Ready(());
        };
        LAST_STEP.with(|step| step.set(Step::NotAsked));
        let polled = task.poll(cx);
        let step = LAST_STEP.with(|step| step.replace(Step::NotAsked));
        if polled.is_pending() {
            match step {
                Step::Asked => *held = None,
                Step::Handed => {
                    let limit = Duration::from_millis(LIMIT_MS.load(Ordering::Relaxed));
                    let deadline = Instant::now() + limit;
                    match held {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => *held = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                Step::NotAsked => {}
            }
            let overdue = held
                .as_mut()
                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
            if !overdue {
                return Poll::Pending;
            }
            debug!("resetting an HTTP/2 stream whose window stayed shut");
            RESETTING.with(|resetting| resetting.set(true));
            // Dropped in place; the stream's response goes with it, and
            // says why it ended.
            self.set(Watched::Done);
            RESETTING.with(|resetting| resetting.set(false));
            return Poll::Ready(());
        }
        self.set(Watched::Done);
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_whose_chunk_waits_too_long_is_dropped_and_one_asked_again_is_not() {
        let limit = Duration::from_secs(20);
        let _executor = StallExecutor::new(limit);
        // Hands a chunk, then is never asked again: dropped after the
        // limit, as a reset.
        struct SeesWhyDropped(std::rc::Rc<Cell<Option<bool>>>);
        impl Drop for SeesWhyDropped {
            fn drop(&mut self) {
                self.0.set(Some(resetting_held_stream()));
            }
        }
        let why = std::rc::Rc::new(Cell::new(None));
        let sees = SeesWhyDropped(why.clone());
        let started = Instant::now();
        let held = Watched::Running {
            task: async move {
                let _sees = sees;
                handed();
                std::future::pending::<()>().await
            },
            held: None,
        };
        tokio::time::timeout(limit * 2, held)
            .await
            .expect("the task dropped");
        assert!(started.elapsed() >= limit);
        assert_eq!(why.get(), Some(true));
        assert!(!resetting_held_stream());

        // Hands chunks that hyper takes within the limit: kept, however
        // long it runs.
        let taken = async move {
            for _ in 0..6 {
                handed();
                tokio::time::sleep(limit / 2).await;
                asked();
                tokio::time::sleep(limit).await;
            }
            std::future::pending::<()>().await
        };
        let mut watched = Box::pin(Watched::Running {
            task: taken,
            held: None,
        });
        let kept = tokio::time::timeout(limit * 12, watched.as_mut()).await;
        assert!(kept.is_err(), "dropped with its chunks taken");
    }

    #[tokio::test]
    async fn outside_a_watched_task_the_steps_are_nobodys() {
        asked();
        handed();
        let (sent, taken) = tokio::sync::oneshot::channel();
        hyper::rt::Executor::execute(&StallExecutor::new(Duration::from_secs(20)), async move {
            // A watched task starts with nothing held.
            let _ = sent.send(LAST_STEP.with(Cell::get));
        });
        assert_eq!(taken.await.unwrap(), Step::NotAsked);
    }
}
