//! The open-file limit a node's streams live under: each stream holds a
//! socket, and a node out of file descriptors cannot even accept the
//! connection it would refuse. Clients would wait in the listen queue with
//! no answer, so the node raises its limit as far as it may at start, and
//! holds at most the streams that fit under it, answering 503 past them.

use std::io;

/// Descriptors kept for what is not a stream: the listener, NATS, the
/// runtime's own, requests that are not streams (metrics scrapes,
/// refused requests on their way out) and connections in their handshake.
pub const RESERVED: u64 = 256;

/// Raises the process's soft limit on open files to its hard limit and
/// returns the soft limit now in force.
pub fn raise_to_hard_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// How many streams fit under an open-file limit of `limit`, at least one.
pub fn streams_that_fit(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(RESERVED).max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_kept_for_what_is_not_a_stream() {
        assert_eq!(streams_that_fit(20_000), 19_744);
        assert_eq!(streams_that_fit(1_024), 768);
        assert_eq!(streams_that_fit(100), 1);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let raised = raise_to_hard_limit().unwrap();
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!((raised, soft), (hard, hard));
    }
}
