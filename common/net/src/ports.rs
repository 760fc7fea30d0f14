//! Free loopback ports for servers whose addresses must be known before
//! they start (a cluster map names every server's port).
//!
//! A port taken with `bind(127.0.0.1:0)` and released for a server to bind
//! later comes from the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`), which the kernel also numbers every
//! client socket from: in the window before the server binds it, or while
//! that server is down, another process's connection or test server may
//! take it. Ports just below the ephemeral range are never numbered by
//! the kernel; [`free_below_ephemeral`] hands those out, each tried for
//! both UDP and TCP first.

use std::net::Ipv4Addr;

/// The lowest port the kernel numbers client sockets from, read from
/// `/proc/sys/net/ipv4/ip_local_port_range` (32,768, Linux's default, where
/// it cannot be read).
pub fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
}

/// No free ports in the span searched.
#[derive(Debug, thiserror::Error)]
#[error("only {found} of {wanted} free loopback ports in {low}..{high}")]
pub struct NoFreePorts {
    /// Ports found.
    pub found: usize,
    /// Ports asked for.
    pub wanted: usize,
    /// The span searched, lowest port.
    pub low: u16,
    /// The span searched, one past the highest port.
    pub high: u16,
}

/// `n` distinct ports free for both UDP and TCP on 127.0.0.1 when asked,
/// from the `span` ports just below the ephemeral range (none below 1,024),
/// trying them in order from `offset` (taken modulo the span) and wrapping.
/// Returns them with the offset after the last port tried, from which a
/// caller that asks again goes on.
///
/// Nothing holds the ports after this returns: another process may bind
/// one before the caller's server does, which only a server that binds and
/// then reports its port would rule out.
///
/// # Errors
/// [`NoFreePorts`] when fewer than `n` are free in the span.
pub fn free_below_ephemeral(
    n: usize,
    span: u16,
    offset: u16,
) -> Result<(Vec<u16>, u16), NoFreePorts> {
    let high = ephemeral_low();
    let low = high.saturating_sub(span).max(1_024);
    let span = high.saturating_sub(low).max(1);
    let mut offset = offset % span;
    // All held at once, so that the ports differ.
    let mut held = Vec::with_capacity(n);
    for _ in 0..span {
        if held.len() == n {
            break;
        }
        let port = low + offset;
        offset = (offset + 1) % span;
        let addr = (Ipv4Addr::LOCALHOST, port);
        if let (Ok(udp), Ok(tcp)) = (
            std::net::UdpSocket::bind(addr),
            std::net::TcpListener::bind(addr),
        ) {
            held.push((port, udp, tcp));
        }
    }
    if held.len() < n {
        return Err(NoFreePorts {
            found: held.len(),
            wanted: n,
            low,
            high,
        });
    }
    Ok((held.into_iter().map(|(port, ..)| port).collect(), offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_below_the_ephemeral_range_and_held_ones_are_passed_over() {
        let (ports, _) = free_below_ephemeral(5, 2_000, 17).unwrap();
        let high = ephemeral_low();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 5, "{ports:?}");
        for &p in &ports {
            assert!(
                p < high && p >= high.saturating_sub(2_000),
                "{p} in {ports:?}"
            );
        }
        // A port someone holds is passed over.
        let (first, _) = free_below_ephemeral(1, 2_000, 17).unwrap();
        let held = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, first[0])).unwrap();
        let (next, _) = free_below_ephemeral(1, 2_000, 17).unwrap();
        assert_ne!(next[0], held.local_addr().unwrap().port());
        // More than the span holds is an error naming the span.
        let e = free_below_ephemeral(3, 1, 0).unwrap_err();
        assert_eq!((e.wanted, e.high), (3, high));
    }
}
