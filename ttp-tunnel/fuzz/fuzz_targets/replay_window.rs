//! The replay window against a model that remembers every counter it accepted: for any
//! sequence of counters (near the highest seen, where reordering happens, or anywhere),
//! `check` and `update` answer exactly what the model says: a counter is accepted once,
//! if it is below the hard limit and not more than WINDOW behind the highest accepted.
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ttp_tunnel::replay::{ReplayWindow, MAX_COUNTER, WINDOW};

#[derive(Arbitrary, Debug)]
enum Step {
    /// Relative to the highest accepted counter: reordering and small jumps.
    Near { delta: i16, commit: bool },
    /// Far ahead (whole-ring clears) or far behind.
    Jump { delta: i64, commit: bool },
    /// Any counter at all, including the limit's neighbourhood.
    At { counter: u64, commit: bool },
}

#[derive(Default)]
struct Model {
    seen: HashSet<u64>,
    last: Option<u64>,
}

impl Model {
    fn accepts(&self, c: u64) -> bool {
        c < MAX_COUNTER && !self.seen.contains(&c) && self.last.is_none_or(|last| c > last || last - c < WINDOW)
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let (mut w, mut m) = (ReplayWindow::new(), Model::default());
    for step in steps {
        let base = m.last.unwrap_or(0);
        let (c, commit) = match step {
            Step::Near { delta, commit } => (base.wrapping_add_signed(delta.into()), commit),
            Step::Jump { delta, commit } => (base.wrapping_add_signed(delta), commit),
            Step::At { counter, commit } => (counter, commit),
        };
        let want = m.accepts(c);
        assert_eq!(w.check(c), want, "check({c}) after last {:?}", m.last);
        if commit {
            assert_eq!(w.update(c), want, "update({c}) after last {:?}", m.last);
            if want {
                m.seen.insert(c);
                m.last = Some(m.last.map_or(c, |l| l.max(c)));
            }
        }
    }
});
