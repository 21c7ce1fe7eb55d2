//! Limits on what one proxy, and one client address, may hold open:
//! `--max-connections`, `--max-connections-per-ip`, `--max-streams-per-ip`.
//!
//! Where each is enforced (see docs/ARCHITECTURE.md): the connection limit
//! in the accept loop (`server.rs`), by not accepting; the per-address
//! connection limit in the connection's task, by closing before the TLS
//! handshake; the stream limit in `proxy.rs`, by answering 429. Every limit
//! is off by default and then costs nothing but an `Option` check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use crate::cli::LimitArgs;

/// The limits as configured; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Client connections open at once, TLS handshakes included. Beyond it
    /// the proxy stops accepting: new connections wait in the listen backlog.
    pub max_connections: Option<NonZeroU32>,
    /// Connections open at once from one client address; a further one is
    /// closed right after accept (after the PROXY header, with one).
    pub max_connections_per_ip: Option<NonZeroU32>,
    /// Event streams (shared-stream subscriptions included) open at once
    /// from one client address; a further one gets 429.
    pub max_streams_per_ip: Option<NonZeroU32>,
    /// Every connection starts with a PROXY protocol header (v1 or v2),
    /// whose source address is the client's.
    pub proxy_protocol: bool,
}

impl From<&LimitArgs> for ConnectionLimits {
    fn from(args: &LimitArgs) -> Self {
        ConnectionLimits {
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            max_streams_per_ip: args.max_streams_per_ip,
            proxy_protocol: args.proxy_protocol,
        }
    }
}

/// How many of something each client address holds, up to `max`.
///
/// One map under one lock: the critical section is a hash lookup, taken
/// once when a connection or stream opens and once when it closes. An
/// address leaves the map when its count returns to zero, so the map holds
/// only addresses with something open.
#[derive(Debug)]
pub struct PerIpLimit {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl PerIpLimit {
    pub fn new(max: NonZeroU32) -> Arc<Self> {
        Arc::new(PerIpLimit {
            max: max.get(),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The most each address may hold.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Counts one more for `ip`, unless it holds `max` already. The count
    /// goes down when the guard is dropped.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpGuard> {
        // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d;
        // counted as a.b.c.d, as it is when it arrives over IPv4.
        let ip = ip.to_canonical();
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PerIpGuard {
            limit: self.clone(),
            ip,
        })
    }

    /// How many `ip` holds now.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.lock().get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    /// Addresses that hold something now.
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // Nothing panics while holding the lock, and the map stays
        // consistent between statements: a poisoned lock is still usable.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.lock();
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// One connection or stream counted for its client address until dropped.
#[derive(Debug)]
pub struct PerIpGuard {
    limit: Arc<PerIpLimit>,
    ip: IpAddr,
}

impl PerIpGuard {
    /// The address it is counted for.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        self.limit.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_gets_max_and_no_more_until_one_is_released() {
        let limit = PerIpLimit::new(NonZeroU32::new(2).unwrap());
        let first = limit.try_acquire(ip("192.0.2.1")).unwrap();
        let _second = limit.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(limit.try_acquire(ip("192.0.2.1")).is_none());
        assert_eq!(limit.count(ip("192.0.2.1")), 2);
        // Another address is counted on its own.
        let other = limit.try_acquire(ip("2001:db8::1")).unwrap();
        assert_eq!(other.ip(), ip("2001:db8::1"));
        drop(first);
        assert_eq!(limit.count(ip("192.0.2.1")), 1);
        assert!(limit.try_acquire(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn addresses_leave_the_map_at_zero() {
        let limit = PerIpLimit::new(NonZeroU32::MIN);
        let guards: Vec<_> = (1..=100u8)
            .map(|n| limit.try_acquire(IpAddr::from([10, 0, 0, n])).unwrap())
            .collect();
        assert_eq!(limit.addresses(), 100);
        drop(guards);
        assert_eq!(limit.addresses(), 0);
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_the_ipv4_address() {
        let limit = PerIpLimit::new(NonZeroU32::MIN);
        let _v4 = limit.try_acquire(ip("192.0.2.7")).unwrap();
        assert!(limit.try_acquire(ip("::ffff:192.0.2.7")).is_none());
        assert_eq!(limit.count(ip("::ffff:192.0.2.7")), 1);
    }
}
