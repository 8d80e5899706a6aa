//! sse-admin: placeholder until the admin service lands.
fn main() {}
