//! Integration tests of sse-admin: a real `nats-server` per test, admin's
//! `run` on a `127.0.0.1:0` listener, HTTP through reqwest.
//!
//! Modules: `support` (the NATS and admin harness), `topics` (life cycle
//! and refusals), `auth`, `publish`, `nodes` (cluster view and metrics),
//! `config` (the binary's `--check-config`) `dashboard` (headless
//! Chromium), `node_e2e` (publish through admin, read on a real node) and
//! `nats_security` (NATS servers that verify client certificates or nkeys)
//! and `traces` (a publish traced over OTLP/HTTP, admin as a process).

mod auth;
mod config;
mod dashboard;
#[path = "../../../node/tests/it/metric_names.rs"]
mod metric_names;
mod nats_security;
mod node_e2e;
mod nodes;
#[path = "../../../node/tests/it/pki.rs"]
mod pki;
#[path = "../../../node/tests/it/ports.rs"]
mod ports;
mod publish;
mod support;
mod topics;
mod traces;
