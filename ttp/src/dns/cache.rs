//! A bounded answer cache honouring TTLs. Arti's resolver returns addresses without
//! their TTLs, so answers are kept for a fixed time, and served with the remaining time.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

pub struct Cache {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<String, (Vec<IpAddr>, Instant)>,
}

impl Cache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Cache { ttl, capacity: capacity.max(1), entries: HashMap::new() }
    }

    /// Addresses and the TTL left, if the name is cached and fresh.
    pub fn get(&self, name: &str, now: Instant) -> Option<(Vec<IpAddr>, u32)> {
        let (addrs, expires) = self.entries.get(name)?;
        let left = expires.checked_duration_since(now)?;
        Some((addrs.clone(), left.as_secs().max(1) as u32))
    }

    pub fn put(&mut self, name: &str, addrs: Vec<IpAddr>, now: Instant) {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, e)| *e > now);
            if self.entries.len() >= self.capacity {
                if let Some(k) = self.entries.iter().min_by_key(|(_, (_, e))| *e).map(|(k, _)| k.clone()) {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(name.to_owned(), (addrs, now + self.ttl));
    }

    pub fn ttl(&self) -> u32 {
        self.ttl.as_secs() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_until_expiry_with_remaining_ttl() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(60), 10);
        c.put("a.test", vec!["192.0.2.1".parse().unwrap()], t0);
        assert_eq!(c.get("a.test", t0 + Duration::from_secs(50)).unwrap().1, 10);
        assert!(c.get("a.test", t0 + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(60), 2);
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            c.put(n, vec![], t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(c.entries.len(), 2);
        assert!(c.get("a", t0).is_none());
    }
}
