//! `sse-bench syscall-cost [--calls N]`: what crossing into the kernel
//! costs on this machine, against what a delivery costs.
//!
//! A server that writes each event to each socket makes one `write` per
//! delivery. Submitting many writes with one system call (io_uring) saves
//! the crossing of each, not the work the kernel does for the write. Two
//! figures bound that saving from above:
//!
//! - `getpid_ns`: a system call that does nothing (`getpid`, not cached by
//!   glibc since 2.25): the crossing alone;
//! - `write_empty_ns`: a `write` of no bytes to a connected loopback TCP
//!   socket: the crossing plus finding the socket, locking it and entering
//!   TCP's send, everything a write pays before it moves a byte.
//!
//! Each is given per call from the process's CPU time (`cpu_*`) and from
//! the wall clock (`wall_*`); on a busy machine the wall clock counts time
//! the process did not run, so the CPU figures are the ones to quote.

use std::{
    io::Write as _,
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{args::Args, procstat};

/// The figures of one measurement, printed as a JSON line.
#[derive(Debug, Serialize)]
pub struct SyscallCost {
    /// Calls timed of each kind.
    pub calls: u64,
    /// CPU time per `getpid`, nanoseconds.
    pub cpu_getpid_ns: f64,
    /// Wall time per `getpid`, nanoseconds.
    pub wall_getpid_ns: f64,
    /// CPU time per empty `write`, nanoseconds.
    pub cpu_write_empty_ns: f64,
    /// Wall time per empty `write`, nanoseconds.
    pub wall_write_empty_ns: f64,
}

/// Runs the measurement with `--calls` (default 5,000,000) of each kind.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let calls: u64 = args.or("calls", 5_000_000)?;
    if calls == 0 {
        bail!("--calls must be at least 1");
    }
    let cost = measure(calls)?;
    println!("{}", serde_json::to_string(&cost)?);
    Ok(())
}

/// Times `calls` calls of each kind.
pub fn measure(calls: u64) -> anyhow::Result<SyscallCost> {
    let (cpu_getpid_ns, wall_getpid_ns) = per_call(calls, || {
        std::hint::black_box(std::process::id());
        Ok(())
    })?;
    let (_reader, mut writer) = loopback_pair()?;
    let (cpu_write_empty_ns, wall_write_empty_ns) = per_call(calls, || match writer.write(&[]) {
        Ok(0) => Ok(()),
        Ok(n) => bail!("an empty write wrote {n} bytes"),
        Err(error) => Err(error).context("an empty write to the socket failed"),
    })?;
    Ok(SyscallCost {
        calls,
        cpu_getpid_ns,
        wall_getpid_ns,
        cpu_write_empty_ns,
        wall_write_empty_ns,
    })
}

/// CPU and wall nanoseconds per call of `call`, over `calls` calls.
fn per_call(
    calls: u64,
    mut call: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let cpu = || {
        procstat::sample(std::process::id())
            .map(|s| s.cpu_s)
            .context("cannot read this process's CPU time")
    };
    let cpu_before = cpu()?;
    let started = Instant::now();
    for _ in 0..calls {
        call()?;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_used = cpu()? - cpu_before;
    let per = |seconds: f64| seconds * 1e9 / calls as f64;
    Ok((per(cpu_used), per(wall)))
}

/// A connected loopback TCP pair: the reading end, then the writing end.
fn loopback_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let reader = TcpStream::connect(listener.local_addr()?)?;
    let (writer, _) = listener.accept()?;
    writer.set_nodelay(true)?;
    Ok((reader, writer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timed_write_is_empty_and_every_call_is_counted() {
        // `measure` fails if any timed write writes a byte or fails.
        let cost = measure(20_000).unwrap();
        assert_eq!(cost.calls, 20_000);
        assert!(cost.wall_getpid_ns > 0.0, "{cost:?}");
        assert!(cost.wall_write_empty_ns > 0.0, "{cost:?}");
    }

    #[test]
    fn no_calls_is_refused() {
        let args = Args::parse(["--calls".to_owned(), "0".to_owned()]).unwrap();
        let error = run(&args).unwrap_err().to_string();
        assert!(error.contains("--calls"), "{error}");
    }
}
