//! Allowed addresses: which peer an inner address belongs to. The same table answers both
//! questions the tunnel asks: where a packet from the TUN goes (its destination), and
//! whether a packet from a peer may carry its source.
//!
//! Unlike WireGuard, where a prefix given to a second peer silently moves to it, peers'
//! prefixes here may not overlap at all: on a Tor gateway each peer's address is also the
//! key its streams are isolated by, so one peer must never be able to send as another,
//! not even by a configuration mistake. An overlap is refused with both prefixes named.

use ipnet::IpNet;

use super::peer::PeerId;

/// A prefix that overlaps one another peer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{new} overlaps {held}, which another peer has")]
pub struct Overlap {
    pub new: IpNet,
    pub held: IpNet,
    /// The peer that holds `held`.
    pub holder: PeerId,
}

/// Do the two prefixes share an address?
pub fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[derive(Debug, Default)]
pub struct AllowedIps {
    entries: Vec<(IpNet, PeerId)>,
}

impl AllowedIps {
    /// Gives `nets` to `peer`; refused (and nothing changed) if any overlaps a prefix of
    /// another peer. A peer's own prefixes may overlap each other.
    pub fn insert(&mut self, peer: PeerId, nets: &[IpNet]) -> Result<(), Overlap> {
        for new in nets {
            let new = new.trunc();
            if let Some((held, holder)) = self.entries.iter().find(|(held, p)| *p != peer && overlap(held, &new)) {
                return Err(Overlap { new, held: *held, holder: *holder });
            }
        }
        self.entries.extend(nets.iter().map(|n| (n.trunc(), peer)));
        Ok(())
    }

    pub fn remove(&mut self, peer: PeerId) {
        self.entries.retain(|(_, p)| *p != peer);
    }

    /// The peer that holds `addr` (with no overlaps, at most one does).
    pub fn lookup(&self, addr: std::net::IpAddr) -> Option<PeerId> {
        self.entries.iter().find(|(n, _)| n.contains(&addr)).map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn prefixes_route_and_may_not_overlap_between_peers() {
        let (a, b) = (PeerId(1), PeerId(2));
        let mut t = AllowedIps::default();
        t.insert(a, &nets(&["10.77.0.2/32", "fd77::2/128"])).unwrap();
        t.insert(b, &nets(&["10.77.1.0/24"])).unwrap();
        assert_eq!(t.lookup("10.77.0.2".parse().unwrap()), Some(a));
        assert_eq!(t.lookup("fd77::2".parse().unwrap()), Some(a));
        assert_eq!(t.lookup("10.77.1.9".parse().unwrap()), Some(b));
        assert_eq!(t.lookup("10.77.0.3".parse().unwrap()), None);
        // Inside, around, or equal to another peer's prefix: refused, nothing added.
        for bad in ["10.77.1.5/32", "10.77.0.0/16", "10.77.0.2/32", "0.0.0.0/0"] {
            let e = t.insert(PeerId(3), &nets(&["10.77.2.1/32", bad])).unwrap_err();
            assert_eq!(e.new, bad.parse::<IpNet>().unwrap().trunc(), "{bad}");
            assert!(e.holder == a || e.holder == b, "{e:?}");
        }
        assert_eq!(t.lookup("10.77.2.1".parse().unwrap()), None, "a refused insert adds nothing");
        // Host bits are cleared, as a route would have them.
        t.insert(PeerId(3), &nets(&["10.77.2.1/24"])).unwrap();
        assert_eq!(t.lookup("10.77.2.200".parse().unwrap()), Some(PeerId(3)));
        t.remove(b);
        assert_eq!(t.lookup("10.77.1.9".parse().unwrap()), None);
        t.insert(PeerId(4), &nets(&["10.77.1.0/24"])).unwrap();
    }
}
