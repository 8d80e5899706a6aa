//! Integration tests of `sse-node` against a real `nats-server` with
//! JetStream, spawned per test on a free port, and real node processes.

mod auth;
mod frames;
mod hardening;
mod http2;
mod input;
mod interest;
mod lean;
mod lifecycle;
mod metric_names;
mod metrics;
mod nats_credentials;
mod nats_tls;
mod parked;
mod pki;
mod ports;
mod resume;
mod support;
mod traces;
