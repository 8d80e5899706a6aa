//! `ssectl` against a real cluster: a `nats-server` with JetStream, an
//! `sse-admin` process and `sse-node` processes, all on ports chosen at run
//! time. The binaries are cargo's: `ssectl` from this crate, `sse-node` and
//! `sse-admin` from `target/debug` (built by `cargo test --workspace`, or
//! named by `SSE_NODE_BIN` / `SSE_ADMIN_BIN`); a missing one fails the test.
//!
//! - `topics`: every topic command, `-o json` parsed back, refusals and exit
//!   codes.
//! - `streams`: `pub` and `tail`, `--from-start`/`--last`, and a tail that
//!   survives the kill of its node and resumes exactly once.
//! - `tokens`: a token minted by `ssectl` is accepted by a node; one that
//!   `ssectl token check` declares invalid is refused by the node.
//! - `status`: nodes, NATS and topics; exit 3 when nothing answers.
//! - `tls`: https to a node with TLS and to admin behind HAProxy terminating
//!   TLS, trusting a private CA from `--ca-file`, the config file or
//!   `SSL_CERT_FILE`; refusals that say why.

#[path = "../../../node/tests/it/pki.rs"]
mod pki;
mod status;
mod streams;
mod support;
mod tls;
mod tokens;
mod topics;
