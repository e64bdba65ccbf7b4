//! Handshake rate limiting: a token bucket per source address, and the load signal that
//! switches the responder to cookie mode.
//!
//! Without a valid cookie a source is limited per address, so a flood from spoofed
//! addresses makes the responder busy enough to demand cookies, and then costs it one MAC
//! and one cookie reply per packet, never a Diffie-Hellman. The table is bounded: at
//! capacity, the idle entries go (a full table of busy spoofers only means everyone pays
//! the cookie round trip).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Handshakes per second a single address may start, and its burst.
pub const PER_SOURCE_RATE: f64 = 20.0;
pub const PER_SOURCE_BURST: f64 = 5.0;
/// Above this many handshake messages in the last second, the responder is under load.
pub const LOAD_THRESHOLD: u32 = 64;
const MAX_SOURCES: usize = 8192;

pub struct RateLimiter {
    sources: HashMap<IpAddr, (f64, Instant)>,
    window_start: Instant,
    in_window: u32,
    last_window: u32,
}

impl RateLimiter {
    pub fn new(now: Instant) -> Self {
        Self { sources: HashMap::new(), window_start: now, in_window: 0, last_window: 0 }
    }

    /// Counts one handshake message and says whether the responder is under load (then
    /// only messages with a valid cookie get a Diffie-Hellman).
    pub fn note_handshake(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= Duration::from_secs(1) {
            self.last_window = if elapsed >= Duration::from_secs(2) { 0 } else { self.in_window };
            self.in_window = 0;
            self.window_start = now;
        }
        self.in_window += 1;
        self.in_window.max(self.last_window) > LOAD_THRESHOLD
    }

    /// May `src` start a handshake now?
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&src) {
            self.sources.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * PER_SOURCE_RATE < PER_SOURCE_BURST
            });
            if self.sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self.sources.entry(src).or_insert((PER_SOURCE_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * PER_SOURCE_RATE).min(PER_SOURCE_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_many_addresses_means_load_and_one_address_is_limited() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0);
        // A quiet responder.
        assert!(!rl.note_handshake(t0));
        // 1,000 initiations in 100 ms from spoofed addresses: load.
        let mut loaded = false;
        for i in 0..1000u32 {
            loaded = rl.note_handshake(t0 + Duration::from_micros(u64::from(i) * 100));
        }
        assert!(loaded);
        // It lasts into the next second, and ends once the flood has stopped.
        assert!(rl.note_handshake(t0 + Duration::from_millis(1100)));
        assert!(!rl.note_handshake(t0 + Duration::from_secs(4)));

        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..100).filter(|i| rl.allow(one, t0 + Duration::from_millis(*i))).count();
        // The burst, plus what 100 ms refill at 20/s.
        assert!((5..=7).contains(&allowed), "{allowed}");
        assert!(rl.allow(one, t0 + Duration::from_secs(2)), "refilled");
        // Other addresses are not affected.
        assert!(rl.allow("192.0.2.2".parse().unwrap(), t0));
    }

    #[test]
    fn the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0);
        for i in 0..(MAX_SOURCES as u32 + 100) {
            rl.allow(IpAddr::from(i.to_be_bytes()), t0 + Duration::from_secs(10));
        }
        assert!(rl.sources.len() <= MAX_SOURCES);
    }
}
