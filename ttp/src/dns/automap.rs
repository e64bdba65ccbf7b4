//! Virtual addresses for names only Tor can resolve (.onion), like Tor's
//! AutomapHostsOnResolve: the DNSPort answers with an address from a private range, and the
//! TransPort maps a connection to it back to the name.
//!
//! Bounded: at most `capacity` names; when full, the least recently used mapping goes.
//! Entries also expire after `ttl` without use, so the table does not pin memory forever.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;

pub struct Automap {
    net: Ipv4Net,
    capacity: usize,
    ttl: Duration,
    by_name: HashMap<String, (Ipv4Addr, Instant)>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// Next host offset to try within `net`.
    cursor: u32,
}

impl Automap {
    pub fn new(net: Ipv4Net, capacity: usize, ttl: Duration) -> Self {
        let hosts = (net.hosts().count()).max(1);
        Automap {
            net,
            capacity: capacity.clamp(1, hosts),
            ttl,
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            cursor: 0,
        }
    }

    pub fn network(&self) -> Ipv4Net {
        self.net
    }

    /// The virtual address of `name` (lowercased), allocating one if needed.
    pub fn map(&mut self, name: &str, now: Instant) -> Ipv4Addr {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.expire(now);
        if let Some((addr, used)) = self.by_name.get_mut(&name) {
            *used = now;
            return *addr;
        }
        if self.by_name.len() >= self.capacity {
            self.evict_oldest();
        }
        let addr = self.free_address();
        self.by_name.insert(name.clone(), (addr, now));
        self.by_addr.insert(addr, name);
        addr
    }

    /// The name behind a virtual address, refreshing its use.
    pub fn name_of(&mut self, addr: Ipv4Addr, now: Instant) -> Option<String> {
        let name = self.by_addr.get(&addr)?.clone();
        if let Some((_, used)) = self.by_name.get_mut(&name) {
            if now.duration_since(*used) > self.ttl {
                return None;
            }
            *used = now;
        }
        Some(name)
    }

    pub fn contains_addr(&self, addr: Ipv4Addr) -> bool {
        self.net.contains(&addr)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        let by_addr = &mut self.by_addr;
        self.by_name.retain(|_, (addr, used)| {
            let keep = now.duration_since(*used) <= ttl;
            if !keep {
                by_addr.remove(addr);
            }
            keep
        });
    }

    fn evict_oldest(&mut self) {
        if let Some(name) = self.by_name.iter().min_by_key(|(_, (_, used))| *used).map(|(n, _)| n.clone()) {
            if let Some((addr, _)) = self.by_name.remove(&name) {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// The next unused host address, cycling through the range (skipping network and
    /// broadcast addresses). The capacity bound guarantees one is free.
    fn free_address(&mut self) -> Ipv4Addr {
        let base = u32::from(self.net.network());
        let span = (self.net.hosts().count() as u32).max(1);
        loop {
            let offset = 1 + self.cursor % span;
            self.cursor = self.cursor.wrapping_add(1);
            let addr = Ipv4Addr::from(base.wrapping_add(offset));
            if !self.by_addr.contains_key(&addr) && self.net.contains(&addr) {
                return addr;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cap: usize) -> Automap {
        Automap::new("10.192.0.0/10".parse().unwrap(), cap, Duration::from_secs(60))
    }

    #[test]
    fn maps_both_ways_and_is_stable() {
        let now = Instant::now();
        let mut t = table(10);
        let a = t.map("Example.onion.", now);
        assert_eq!(t.map("example.onion", now), a);
        assert!(t.contains_addr(a));
        assert_eq!(t.name_of(a, now).as_deref(), Some("example.onion"));
        assert_ne!(t.map("other.onion", now), a);
    }

    #[test]
    fn bounded_with_lru_eviction_and_expiry() {
        let t0 = Instant::now();
        let mut t = table(2);
        let a = t.map("a.onion", t0);
        t.map("b.onion", t0 + Duration::from_secs(1));
        t.map("a.onion", t0 + Duration::from_secs(2)); // a is now the most recent
        t.map("c.onion", t0 + Duration::from_secs(3)); // evicts b
        assert_eq!(t.len(), 2);
        assert_eq!(t.name_of(a, t0 + Duration::from_secs(3)).as_deref(), Some("a.onion"));
        assert!(!t.by_name.contains_key("b.onion"));
        // everything expires after the ttl
        t.map("d.onion", t0 + Duration::from_secs(200));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_tiny_range_never_hands_out_a_used_address() {
        let mut t = Automap::new("10.192.0.0/30".parse().unwrap(), 100, Duration::from_secs(60));
        let now = Instant::now();
        let a = t.map("a.onion", now);
        let b = t.map("b.onion", now);
        assert_ne!(a, b);
        let c = t.map("c.onion", now); // capacity clamps to 2 hosts: evicts one
        assert!(c == a || c == b);
        assert_eq!(t.len(), 2);
    }
}
