//! A bounded answer cache. Arti's resolver returns addresses without their TTLs, so
//! answers are kept for a fixed time, and served with the remaining time.
//!
//! One cache per owner ([`Owner`]): were it shared, a user could learn what another looked
//! up from an answer that comes back at once, or with less than the full TTL.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::principal::Owner;

pub struct Cache {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<(Owner, String), (Vec<IpAddr>, Instant)>,
}

impl Cache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Cache { ttl, capacity: capacity.max(1), entries: HashMap::new() }
    }

    /// `owner`'s answer for `name` and the TTL left, if cached and fresh.
    pub fn get(&self, owner: Owner, name: &str, now: Instant) -> Option<(Vec<IpAddr>, u32)> {
        let (addrs, expires) = self.entries.get(&(owner, name.to_owned()))?;
        let left = expires.checked_duration_since(now)?;
        Some((addrs.clone(), left.as_secs().max(1) as u32))
    }

    pub fn put(&mut self, owner: Owner, name: &str, addrs: Vec<IpAddr>, now: Instant) {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, expires)| *expires > now);
        }
        if self.entries.len() >= self.capacity {
            // Still full of fresh answers: the eighth that expires first goes at once, so
            // that a flood costs one scan per eighth, not one per answer.
            let mut expiries: Vec<Instant> = self.entries.values().map(|(_, e)| *e).collect();
            let cut = (expiries.len() / 8).max(1) - 1;
            let (_, last_gone, _) = expiries.select_nth_unstable(cut);
            let last_gone = *last_gone;
            self.entries.retain(|_, (_, expires)| *expires > last_gone);
        }
        self.entries.insert((owner, name.to_owned()), (addrs, now + self.ttl));
    }

    pub fn ttl(&self) -> u32 {
        self.ttl.as_secs() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Owner = Owner::Uid(1000);

    #[test]
    fn serves_until_expiry_with_remaining_ttl() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(60), 10);
        c.put(ALICE, "a.test", vec!["192.0.2.1".parse().unwrap()], t0);
        assert_eq!(c.get(ALICE, "a.test", t0 + Duration::from_secs(50)).unwrap().1, 10);
        assert!(c.get(ALICE, "a.test", t0 + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn one_owners_answers_are_not_anothers() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(60), 10);
        c.put(ALICE, "a.test", vec!["192.0.2.1".parse().unwrap()], t0);
        assert!(c.get(Owner::Uid(1001), "a.test", t0).is_none());
        assert!(c.get(Owner::Addr("10.77.0.2".parse().unwrap()), "a.test", t0).is_none());
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(60), 16);
        for i in 0..100u64 {
            c.put(ALICE, &i.to_string(), vec![], t0 + Duration::from_secs(i));
            assert!(c.entries.len() <= 16);
        }
        assert!(c.get(ALICE, "0", t0).is_none());
        assert!(c.get(ALICE, "99", t0 + Duration::from_secs(99)).is_some());
    }
}
