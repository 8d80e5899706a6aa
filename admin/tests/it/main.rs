//! Integration tests of sse-admin: a real `nats-server` per test, admin's
//! `run` on a `127.0.0.1:0` listener, HTTP through reqwest.
//!
//! Modules: `support` (the NATS and admin harness) and `topics` (life cycle
//! and refusals).

mod support;
mod topics;
