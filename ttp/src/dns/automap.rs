//! Virtual addresses for names only Tor can resolve (.onion), like Tor's
//! AutomapHostsOnResolve: the DNSPort answers with an address from a private range, and the
//! TransPort maps a connection to it back to the name.
//!
//! Private to whoever asked ([`Owner`]: a local user, or a gateway client by address).
//! Each owner has its own mappings: two users who look up one name get two addresses, a
//! reverse lookup (PTR) names only the asker's own mappings, and a connection to another
//! owner's address goes nowhere. Addresses are drawn at random from the whole range, so
//! one address says nothing about when, or after what, it was handed out. Tor's automap
//! table is one for all its clients; this one is not, because ttp's clients are users of
//! one machine who should not learn each other's onion services.
//!
//! Bounded: at most `capacity` names in all, and one owner at most half of them; past a
//! bound the least recently used eighth (of the owner's, or of all) goes at once, so a
//! flood costs a scan per eighth, not per name. Entries also expire after `ttl` without
//! use, so the table does not pin memory forever.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;

use crate::principal::Owner;

/// One owner's mapping of one name.
struct Entry {
    addr: Ipv4Addr,
    used: Instant,
}

pub struct Automap {
    net: Ipv4Net,
    capacity: usize,
    per_owner: usize,
    ttl: Duration,
    owners: HashMap<Owner, HashMap<String, Entry>>,
    /// Every address handed out: whose, and for which name.
    by_addr: HashMap<Ipv4Addr, (Owner, String)>,
    /// When expired entries were last swept out.
    swept: Option<Instant>,
}

/// What a virtual address is to the one who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Not in the virtual range: a real address.
    Outside,
    /// The asker's own mapping of this name (its use refreshed).
    Name(String),
    /// In the range, but no mapping of the asker's (never made, expired, or another's:
    /// indistinguishable on purpose).
    Nothing,
}

impl Automap {
    pub fn new(net: Ipv4Net, capacity: usize, ttl: Duration) -> Self {
        let capacity = capacity.clamp(1, Self::span(net) as usize);
        Automap {
            net,
            capacity,
            per_owner: crate::load::share_of(capacity),
            ttl,
            owners: HashMap::new(),
            by_addr: HashMap::new(),
            swept: None,
        }
    }

    pub fn network(&self) -> Ipv4Net {
        self.net
    }

    /// `owner`'s virtual address for `name` (lowercased), allocating one if needed.
    pub fn map(&mut self, owner: Owner, name: &str, now: Instant) -> Ipv4Addr {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.sweep(now);
        let ttl = self.ttl;
        if let Some(e) = self.owners.get_mut(&owner).and_then(|names| names.get_mut(&name)) {
            if now.duration_since(e.used) <= ttl {
                e.used = now;
                return e.addr;
            }
        }
        self.remove(owner, &name);
        if self.owners.get(&owner).is_some_and(|names| names.len() >= self.per_owner) {
            self.evict_oldest(Some(owner));
        }
        if self.by_addr.len() >= self.capacity {
            self.evict_oldest(None);
        }
        let addr = self.free_address();
        self.owners.entry(owner).or_default().insert(name.clone(), Entry { addr, used: now });
        self.by_addr.insert(addr, (owner, name));
        addr
    }

    /// What `addr` is to `owner`: its own mapping's name (use refreshed), nothing, or not
    /// a virtual address at all.
    pub fn lookup(&mut self, owner: Owner, addr: Ipv4Addr, now: Instant) -> Mapped {
        if !self.net.contains(&addr) {
            return Mapped::Outside;
        }
        let Some((holder, name)) = self.by_addr.get(&addr) else { return Mapped::Nothing };
        if *holder != owner {
            return Mapped::Nothing;
        }
        let ttl = self.ttl;
        match self.owners.get_mut(&owner).and_then(|names| names.get_mut(name)) {
            Some(e) if now.duration_since(e.used) <= ttl => {
                e.used = now;
                Mapped::Name(name.clone())
            }
            _ => Mapped::Nothing,
        }
    }

    pub fn contains_addr(&self, addr: Ipv4Addr) -> bool {
        self.net.contains(&addr)
    }

    /// Mappings, of every owner.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    fn remove(&mut self, owner: Owner, name: &str) {
        if let Some(names) = self.owners.get_mut(&owner) {
            if let Some(e) = names.remove(name) {
                self.by_addr.remove(&e.addr);
            }
            if names.is_empty() {
                self.owners.remove(&owner);
            }
        }
    }

    /// Drops every expired entry, at most once per quarter of the ttl (a scan of the
    /// whole table per query would make a flood of names quadratic).
    fn sweep(&mut self, now: Instant) {
        if self.swept.is_some_and(|t| now.duration_since(t) < self.ttl / 4) {
            return;
        }
        self.swept = Some(now);
        let ttl = self.ttl;
        self.retain(None, |used| now.duration_since(used) <= ttl);
    }

    /// Forgets the least recently used eighth (at least one) of `owner`'s entries, or of
    /// everyone's.
    fn evict_oldest(&mut self, owner: Option<Owner>) {
        let mut ages: Vec<Instant> = match owner {
            Some(o) => self.owners.get(&o).map(|n| n.values().map(|e| e.used).collect()).unwrap_or_default(),
            None => self.owners.values().flat_map(|n| n.values().map(|e| e.used)).collect(),
        };
        if ages.is_empty() {
            return;
        }
        let cut = (ages.len() / 8).max(1).min(ages.len()) - 1;
        let (_, newest_gone, _) = ages.select_nth_unstable(cut);
        let newest_gone = *newest_gone;
        // Ties at the cut go too: at least one entry leaves, and the bound holds.
        self.retain(owner, |used| used > newest_gone);
    }

    /// Keeps the entries (of `only`, or of all owners) whose last use `keep` accepts.
    fn retain(&mut self, only: Option<Owner>, keep: impl Fn(Instant) -> bool) {
        let by_addr = &mut self.by_addr;
        self.owners.retain(|owner, names| {
            if only.is_none_or(|o| o == *owner) {
                names.retain(|_, e| {
                    let kept = keep(e.used);
                    if !kept {
                        by_addr.remove(&e.addr);
                    }
                    kept
                });
            }
            !names.is_empty()
        });
    }

    /// Host addresses in `net` (network and broadcast addresses excluded when there are
    /// any others).
    fn span(net: Ipv4Net) -> u32 {
        match net.prefix_len() {
            32 => 1,
            31 => 2,
            p => ((1u64 << (32 - p)) - 2).min(u64::from(u32::MAX)) as u32,
        }
    }

    /// An unused host address drawn at random (the capacity bound guarantees one is free).
    /// A few random draws, then a walk from a random start: in a nearly full small range
    /// draws alone could take long.
    fn free_address(&self) -> Ipv4Addr {
        let base = u32::from(self.net.network());
        let span = Self::span(self.net);
        let first = if self.net.prefix_len() >= 31 { 0 } else { 1 };
        let at = |offset: u32| Ipv4Addr::from(base.wrapping_add(first + offset % span));
        for _ in 0..8 {
            let addr = at(random_u32());
            if !self.by_addr.contains_key(&addr) {
                return addr;
            }
        }
        let start = random_u32();
        (0..span).map(|i| at(start.wrapping_add(i))).find(|a| !self.by_addr.contains_key(a)).unwrap_or(at(start))
    }
}

/// Four bytes from the kernel's generator.
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // getrandom(2) does not fail once the kernel's pool is ready (it is long before any
    // DNS query); should it, the draw is zero and the walk still finds a free address.
    let _ = getrandom::getrandom(&mut b);
    u32::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Owner = Owner::Uid(1000);
    const BOB: Owner = Owner::Uid(1001);

    fn table(cap: usize) -> Automap {
        Automap::new("10.192.0.0/10".parse().unwrap(), cap, Duration::from_secs(60))
    }

    #[test]
    fn maps_both_ways_and_is_stable() {
        let now = Instant::now();
        let mut t = table(10);
        let a = t.map(ALICE, "Example.onion.", now);
        assert_eq!(t.map(ALICE, "example.onion", now), a);
        assert!(t.contains_addr(a));
        assert_eq!(t.lookup(ALICE, a, now), Mapped::Name("example.onion".into()));
        assert_ne!(t.map(ALICE, "other.onion", now), a);
        assert_eq!(t.lookup(ALICE, "192.0.2.1".parse().unwrap(), now), Mapped::Outside);
    }

    /// Another owner learns nothing from the table: not the name behind an address, not
    /// whether a name was looked up (its own address for it is another one).
    #[test]
    fn mappings_are_private_to_their_owner() {
        let now = Instant::now();
        let mut t = table(10);
        let a = t.map(ALICE, "secret.onion", now);
        assert_eq!(t.lookup(BOB, a, now), Mapped::Nothing);
        assert_eq!(t.lookup(Owner::Addr("10.77.0.2".parse().unwrap()), a, now), Mapped::Nothing);
        let b = t.map(BOB, "secret.onion", now);
        assert_ne!(a, b);
        assert_eq!(t.lookup(BOB, b, now), Mapped::Name("secret.onion".into()));
        assert_eq!(t.lookup(ALICE, a, now), Mapped::Name("secret.onion".into()));
    }

    /// Addresses are not handed out in order: neither consecutive nor guessable from a
    /// user's own.
    #[test]
    fn addresses_are_drawn_at_random() {
        let now = Instant::now();
        let mut t = table(1000);
        let addrs: Vec<u32> = (0..100).map(|i| u32::from(t.map(ALICE, &format!("n{i}.onion"), now))).collect();
        let consecutive = addrs.windows(2).filter(|w| w[1].wrapping_sub(w[0]) == 1).count();
        assert!(consecutive < 3, "{consecutive} of 99 steps were +1");
        let low = addrs.iter().filter(|a| **a - u32::from(t.net.network()) < 1000).count();
        assert!(low < 3, "{low} of 100 addresses among the first 1,000 of 4 million");
    }

    #[test]
    fn bounded_with_lru_eviction_and_expiry() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = table(4);
        let a = t.map(ALICE, "a.onion", t0);
        t.map(ALICE, "b.onion", t0 + s(1));
        t.map(ALICE, "a.onion", t0 + s(2)); // a is now the most recent
        t.map(ALICE, "c.onion", t0 + s(3)); // Alice's share is 2: evicts b
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(ALICE, a, t0 + s(2)), Mapped::Name("a.onion".into()));
        assert!(!t.owners[&ALICE].contains_key("b.onion"));
        // Bob's share is his own; the table's bound (4) makes room from everyone's oldest.
        t.map(BOB, "x.onion", t0 + s(4));
        t.map(BOB, "y.onion", t0 + s(5));
        assert_eq!(t.len(), 4);
        t.map(Owner::Uid(1002), "z.onion", t0 + s(6));
        assert_eq!(t.len(), 4);
        assert_eq!(t.lookup(ALICE, a, t0 + s(6)), Mapped::Nothing, "the oldest of all went");
        // Everything expires after the ttl.
        t.map(ALICE, "d.onion", t0 + s(200));
        assert_eq!(t.len(), 1);
        assert_eq!(t.by_addr.len(), t.owners.values().map(HashMap::len).sum::<usize>());
    }

    #[test]
    fn a_tiny_range_never_hands_out_a_used_address() {
        let mut t = Automap::new("10.192.0.0/30".parse().unwrap(), 100, Duration::from_secs(60));
        let now = Instant::now();
        for round in 0..50 {
            let a = t.map(ALICE, &format!("a{round}.onion"), now);
            let b = t.map(BOB, &format!("b{round}.onion"), now);
            assert_ne!(a, b);
            assert!(t.contains_addr(a) && t.contains_addr(b));
            assert!(![0, 3].contains(&(u32::from(a) & 3)), "network or broadcast address {a}");
            assert_eq!(t.len(), 2); // capacity clamps to the 2 hosts
        }
    }

    /// A flood of names from one owner costs about a scan per eighth of its share, and
    /// leaves the table within its bounds.
    #[test]
    fn a_flood_stays_within_the_bounds() {
        let now = Instant::now();
        let mut t = table(1024);
        let kept = t.map(BOB, "kept.onion", now);
        for i in 0..20_000 {
            t.map(ALICE, &format!("flood{i}.onion"), now + Duration::from_millis(i));
        }
        assert!(t.owners[&ALICE].len() <= 512);
        assert_eq!(t.lookup(BOB, kept, now + Duration::from_secs(30)), Mapped::Name("kept.onion".into()));
    }
}
