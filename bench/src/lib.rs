//! `sse-bench`: the load generator that measures sse-node against Nchan.
//!
//! - [`scenario`]: the coordinator, one scenario against one server, with
//!   the server's CPU and memory read from `/proc` ([`procstat`]);
//! - [`worker`]: child processes holding the SSE connections, each parsed
//!   by [`sse`], latencies kept in a [`histogram`];
//! - [`publish`]: JetStream and HTTP publishers;
//! - [`report`]: result lines to the Markdown tables of `docs/benchmarks.md`;
//! - [`bare`]: the bare write loop, the baseline server;
//! - [`probe`]: a JetStream consumer timing events with no node in between.
//!
//! `scripts/bench` starts the servers and calls this binary per scenario;
//! see `docs/benchmarks.md`.

pub mod args;
pub mod bare;
pub mod histogram;
pub mod node_lag;
pub mod probe;
pub mod procstat;
pub mod publish;
pub mod report;
pub mod scenario;
pub mod sse;
pub mod syscall_cost;
pub mod worker;
