//! Integration tests of sse-admin: a real `nats-server` per test, admin's
//! `run` on a `127.0.0.1:0` listener, HTTP through reqwest.
//!
//! Modules: `support` (the NATS and admin harness), `topics` (life cycle
//! and refusals), `auth`, `publish`, `nodes` (cluster view and metrics),
//! `config` (the binary's `--check-config`) `dashboard` (headless
//! Chromium) and `node_e2e` (publish through admin, read on a real node).

mod auth;
mod config;
mod dashboard;
mod node_e2e;
mod nodes;
mod publish;
mod support;
mod topics;
