//! Anti-replay: a sliding window over the 64-bit counters of transport packets, RFC 6479
//! style. The window remembers the last [`WINDOW`] counters behind the highest one seen,
//! so packets reordered under load are still accepted once, and any counter seen before,
//! or too old to tell, is refused.
//!
//! The bitmap is a ring of 64-bit blocks with one block more than the window needs:
//! moving forward clears whole blocks, never bit by bit, so the cost of a jump is bounded
//! by the ring's size, whatever the counter does.
//!
//! [`ReplayWindow::check`] is cheap and comes before decryption (an attacker's garbage
//! costs no AEAD); [`ReplayWindow::update`] comes after the packet authenticated, so a
//! forged counter can never move the window.

/// Counters behind the highest seen that are still told apart.
pub const WINDOW: u64 = 8192;
const BITS: u64 = 64;
const BLOCKS: usize = (WINDOW / BITS) as usize + 1;
/// Like WireGuard's REJECT_AFTER_MESSAGES: counters this high are refused, so the counter
/// never wraps within a session (the session must rekey long before).
pub const MAX_COUNTER: u64 = u64::MAX - WINDOW - 1;

#[derive(Clone)]
pub struct ReplayWindow {
    /// The highest counter accepted (meaningless while `empty`).
    last: u64,
    empty: bool,
    ring: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self { last: 0, empty: true, ring: [0; BLOCKS] }
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(counter: u64) -> (usize, u64) {
        (((counter / BITS) % BLOCKS as u64) as usize, 1 << (counter % BITS))
    }

    /// Would `counter` be accepted? Changes nothing.
    pub fn check(&self, counter: u64) -> bool {
        if counter >= MAX_COUNTER {
            return false;
        }
        if self.empty || counter > self.last {
            return true;
        }
        if self.last - counter >= WINDOW {
            return false;
        }
        let (block, bit) = Self::slot(counter);
        self.ring[block] & bit == 0
    }

    /// Records `counter` (after its packet authenticated); false if it must be dropped
    /// after all (a replay, or too old).
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if self.empty || counter > self.last {
            // Blocks entered for the first time are cleared (none if still in last's block).
            let (from, to) = (self.last / BITS + 1, counter / BITS);
            if self.empty || to.saturating_sub(from) >= BLOCKS as u64 {
                self.ring = [0; BLOCKS];
            } else {
                for b in from..=to {
                    self.ring[(b % BLOCKS as u64) as usize] = 0;
                }
            }
            self.last = counter;
            self.empty = false;
        }
        let (block, bit) = Self::slot(counter);
        self.ring[block] |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn in_order_replays_reordering_and_age() {
        let mut w = ReplayWindow::new();
        for c in 0..20_000 {
            assert!(w.update(c), "{c}");
        }
        assert!(!w.update(19_999), "replay of the newest");
        assert!(!w.update(19_000), "replay inside the window");
        assert!(!w.update(10_000), "older than the window");
        // Reordered: a gap filled later, once.
        assert!(w.update(20_010));
        assert!(w.update(20_005));
        assert!(!w.update(20_005));
        // The oldest counter still inside the window, and the newest one outside it.
        let mut w = ReplayWindow::new();
        let last = WINDOW + 100;
        assert!(w.update(last));
        assert!(!w.check(last - WINDOW));
        assert!(w.update(last - WINDOW + 1));
    }

    #[test]
    fn a_jump_forgets_what_fell_out_and_nothing_else() {
        let mut w = ReplayWindow::new();
        assert!(w.update(5));
        assert!(w.update(5 + 3 * WINDOW));
        assert!(!w.update(5), "too old now");
        assert!(w.update(5 + 3 * WINDOW - 1), "never seen, inside the window");
        assert!(!w.update(5 + 3 * WINDOW));
    }

    #[test]
    fn check_never_moves_the_window_and_huge_counters_are_refused() {
        let mut w = ReplayWindow::new();
        assert!(w.update(100));
        assert!(w.check(1_000_000));
        assert!(w.update(99), "check(1_000_000) moved nothing");
        assert!(!w.check(MAX_COUNTER) && !w.update(u64::MAX));
    }

    /// Against a model that remembers every counter: random walks with reordering,
    /// duplicates and jumps.
    #[test]
    fn agrees_with_a_model_that_remembers_everything() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20 {
            let mut w = ReplayWindow::new();
            let mut seen: HashSet<u64> = HashSet::new();
            let mut top = 0u64;
            let mut highest: Option<u64> = None;
            for _ in 0..20_000 {
                let r = next();
                let c = match r % 10 {
                    0 => top + r % 3 * WINDOW,                      // a jump ahead
                    1..=3 => top.saturating_sub(r % (WINDOW + 50)), // late, maybe too late
                    4 => *seen.iter().next().unwrap_or(&0),         // a replay
                    _ => top + 1 + r % 4,                           // roughly in order
                };
                let fresh = !seen.contains(&c);
                let in_window = highest.is_none_or(|h| c > h || h - c < WINDOW);
                let want = fresh && in_window;
                assert_eq!(w.update(c), want, "counter {c}, highest {highest:?}");
                if want {
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                    top = top.max(c);
                }
            }
        }
    }
}
