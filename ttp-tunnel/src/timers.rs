//! Session timers: when to rekey, when to give up on a session, when to send a keepalive.
//! WireGuard's schedule (the whitepaper's section 6), as a pure state machine: the device
//! reports events and asks [`Timers::due`] what to do at `now`.
//!
//! - The initiator of a session starts a new handshake when it sends data on a session
//!   [`REKEY_AFTER_TIME`] old, or has sent [`REKEY_AFTER_MESSAGES`], so keys are
//!   short-lived; and when it receives data on one [`REKEY_AFTER_RECEIVING`] old, so the
//!   session does not die under a peer that only answers. An idle session is not renewed:
//!   it expires, and the next packet starts a handshake (WireGuard's rules: an idle tunnel
//!   stays silent).
//! - A session older than [`REJECT_AFTER_TIME`] is never used again, in either
//!   direction: an old session cannot be revived.
//! - A handshake without an answer is retried every [`REKEY_TIMEOUT`], for at most
//!   [`REKEY_ATTEMPT_TIME`].
//! - Having received data and sent nothing for [`KEEPALIVE_TIMEOUT`], a side sends an
//!   empty data packet, so the peer knows the session (and its NAT mapping) is alive.
//! - Having sent data and heard nothing back for [`KEEPALIVE_TIMEOUT`] + [`REKEY_TIMEOUT`]
//!   (the peer's keepalive would have come by then), a side starts a new handshake: the
//!   peer may have restarted and lost the session, and without this the line would stay
//!   dead until the next rekey.
//! - With a persistent keepalive configured, a side that has sent nothing for that long
//!   sends an empty packet anyway, so that a NAT in front of it keeps its mapping.

use std::time::{Duration, Instant};

pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT: WireGuard's point past which
/// receiving on our session also starts a new handshake.
pub const REKEY_AFTER_RECEIVING: Duration = Duration::from_secs(165);

/// What the device should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a (new) handshake initiation.
    Initiate,
    /// Send an empty data packet.
    Keepalive,
    /// Drop the current session: too old to use.
    Expire,
    /// Stop trying: the peer did not answer for REKEY_ATTEMPT_TIME.
    GiveUp,
}

#[derive(Debug, Default)]
pub struct Timers {
    /// When the current session was made, and whether we initiated it.
    session: Option<(Instant, bool)>,
    /// When the first unanswered initiation of this attempt was sent, and the last one.
    attempt: Option<(Instant, Instant)>,
    last_sent: Option<Instant>,
    /// The last packet with a payload sent (a keepalive is not data).
    last_data_sent: Option<Instant>,
    last_received: Option<Instant>,
    /// Received data since our last send (a keepalive is owed).
    owe_keepalive: bool,
    /// The first data packet sent since anything was last received (see the module).
    unanswered_since: Option<Instant>,
    /// A cookie came for the pending initiation: retry at once, not after REKEY_TIMEOUT.
    retry_now: bool,
    /// [`REKEY_AFTER_TIME`] unless the configuration says otherwise.
    rekey_after: Option<Duration>,
    /// The peer's persistent keepalive interval, if it has one.
    persistent: Option<Duration>,
}

impl Timers {
    /// Timers whose sessions (the ones we initiated) are renewed after `rekey_after`.
    /// Timers whose sessions (the ones we initiated) are renewed after `rekey_after`,
    /// sending a keepalive after `persistent` of silence if that is set.
    pub fn new(rekey_after: Option<Duration>, persistent: Option<Duration>) -> Timers {
        Timers { rekey_after, persistent, ..Timers::default() }
    }

    pub fn initiation_sent(&mut self, now: Instant) {
        let first = self.attempt.map_or(now, |(first, _)| first);
        self.attempt = Some((first, now));
        self.last_sent = Some(now);
        self.retry_now = false;
    }

    /// The responder answered the pending initiation with a cookie: it is under load, and
    /// the initiation was not lost. Retrying at once (with the cookie) rather than after
    /// REKEY_TIMEOUT gets a peer in within a second of a flood instead of five.
    pub fn cookie_received(&mut self) {
        self.retry_now = self.attempt.is_some();
    }

    pub fn session_started(&mut self, now: Instant, we_initiated: bool) {
        self.session = Some((now, we_initiated));
        self.attempt = None;
        self.unanswered_since = None;
    }

    /// A data packet (with a payload) went out.
    pub fn data_sent(&mut self, now: Instant) {
        self.keepalive_sent(now);
        self.last_data_sent = Some(now);
        self.unanswered_since.get_or_insert(now);
    }

    /// An empty packet went out: it asks for no answer.
    pub fn keepalive_sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.owe_keepalive = false;
    }

    /// An authenticated packet (data or keepalive) came in.
    pub fn data_received(&mut self, now: Instant) {
        self.last_received = Some(now);
        self.owe_keepalive = true;
        self.unanswered_since = None;
    }

    /// What is due at `now`, given how many packets the session has sent.
    pub fn due(&mut self, now: Instant, sent: u64) -> Option<Due> {
        if let Some((first, last)) = self.attempt {
            if now.duration_since(first) >= REKEY_ATTEMPT_TIME {
                self.attempt = None;
                return Some(Due::GiveUp);
            }
            return (self.retry_now || now.duration_since(last) >= REKEY_TIMEOUT).then_some(Due::Initiate);
        }
        let persistent_due =
            |t: &Timers| t.persistent.is_some_and(|every| t.last_sent.is_none_or(|l| now.duration_since(l) >= every));
        let Some((born, ours)) = self.session else {
            // No session (it expired idle, or never was) and a keepalive is due: a
            // handshake carries it, as WireGuard's does, so the NAT mapping stays open.
            return persistent_due(self).then_some(Due::Initiate);
        };
        let age = now.duration_since(born);
        if age >= REJECT_AFTER_TIME {
            self.session = None;
            return Some(Due::Expire);
        }
        let rekey_at = born + self.rekey_after.unwrap_or(REKEY_AFTER_TIME);
        let sent_late = self.last_data_sent.is_some_and(|t| t >= rekey_at);
        let received_late = self.last_received.is_some_and(|t| t >= born + REKEY_AFTER_RECEIVING);
        if ours && (sent_late || received_late || sent >= REKEY_AFTER_MESSAGES) {
            return Some(Due::Initiate);
        }
        if self.unanswered_since.is_some_and(|t| now.duration_since(t) >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT) {
            self.unanswered_since = None;
            return Some(Due::Initiate);
        }
        if persistent_due(self) {
            self.owe_keepalive = false;
            // A keepalive is sending: on our session old enough to renew, it renews it.
            let renew = ours && age >= self.rekey_after.unwrap_or(REKEY_AFTER_TIME);
            return Some(if renew { Due::Initiate } else { Due::Keepalive });
        }
        let quiet = self.last_sent.is_none_or(|t| now.duration_since(t) >= KEEPALIVE_TIMEOUT);
        if self.owe_keepalive && quiet && self.last_received.is_some() {
            self.owe_keepalive = false;
            return Some(Due::Keepalive);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rekey_expiry_retries_and_keepalives_follow_the_schedule() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut t = Timers::default();
        assert_eq!(t.due(t0, 0), None, "nothing to do without a session");

        // An unanswered initiation is retried every 5 s, then abandoned after 90 s.
        t.initiation_sent(t0);
        assert_eq!(t.due(s(4), 0), None);
        assert_eq!(t.due(s(5), 0), Some(Due::Initiate));
        t.initiation_sent(s(5));
        t.cookie_received();
        assert_eq!(t.due(s(5), 0), Some(Due::Initiate), "a cookie: retry at once");
        t.initiation_sent(s(5));
        assert_eq!(t.due(s(6), 0), None, "once");
        assert_eq!(t.due(s(90), 0), Some(Due::GiveUp));

        // Our session: renewed when data goes out on it at 120 s or later (or at the message
        // limit), or data comes in at 165 s or later; idle, it is not renewed, and dead at
        // 180 s.
        t.session_started(s(100), true);
        assert_eq!(t.due(s(150), 0), None);
        assert_eq!(t.due(s(150), REKEY_AFTER_MESSAGES), Some(Due::Initiate));
        assert_eq!(t.due(s(220), 0), None, "idle: an idle tunnel stays silent");
        t.data_sent(s(221));
        assert_eq!(t.due(s(221), 0), Some(Due::Initiate), "data sent on a session 121 s old");
        let mut r = Timers::default();
        r.session_started(s(100), true);
        r.data_received(s(264));
        assert_ne!(r.due(s(264), 0), Some(Due::Initiate), "received at 164 s: not yet a rekey");
        r.data_received(s(265));
        assert_eq!(r.due(s(265), 0), Some(Due::Initiate), "received at 165 s");
        let mut idle = Timers::default();
        idle.session_started(s(100), true);
        assert_eq!(idle.due(s(279), 0), None);
        assert_eq!(idle.due(s(280), 0), Some(Due::Expire));
        assert_eq!(idle.due(s(281), 0), None, "expired once");

        // The peer's session: we never rekey it, but still drop it when too old.
        t.session_started(s(300), false);
        assert_eq!(t.due(s(430), 0), None);
        assert_eq!(t.due(s(480), 0), Some(Due::Expire));

        // A keepalive is owed only after receiving, and only once the line is quiet.
        t.session_started(s(500), false);
        t.data_sent(s(500));
        t.data_received(s(501));
        assert_eq!(t.due(s(505), 0), None);
        assert_eq!(t.due(s(510), 0), Some(Due::Keepalive));
        assert_eq!(t.due(s(511), 0), None, "owed once");
        t.data_received(s(512));
        t.data_sent(s(513));
        assert_eq!(t.due(s(525), 0), None, "our data answered it");

        // Data sent and nothing heard for 15 s: the peer may have lost the session.
        t.data_received(s(526));
        t.keepalive_sent(s(527));
        assert_eq!(t.due(s(545), 0), None, "a keepalive asks for no answer");
        t.data_sent(s(546));
        t.data_sent(s(550));
        assert_eq!(t.due(s(560), 0), None, "counted from the first unanswered packet, not yet");
        t.data_received(s(560));
        t.data_sent(s(562));
        assert_eq!(t.due(s(576), 0), None);
        assert_eq!(t.due(s(577), 0), Some(Due::Initiate));
        assert_eq!(t.due(s(578), 0), None, "once");
    }

    #[test]
    fn a_persistent_keepalive_goes_out_after_each_silence_of_its_length() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut t = Timers::new(None, Some(Duration::from_secs(25)));
        assert_eq!(t.due(s(30), 0), Some(Due::Initiate), "no session yet: a handshake carries it");
        t.session_started(t0, true);
        t.keepalive_sent(t0);
        assert_eq!(t.due(s(24), 0), None);
        assert_eq!(t.due(s(25), 0), Some(Due::Keepalive), "silent for 25 s, nothing received");
        t.keepalive_sent(s(25));
        t.keepalive_sent(s(40));
        assert_eq!(t.due(s(64), 0), None, "counted from the last thing sent");
        assert_eq!(t.due(s(65), 0), Some(Due::Keepalive));
        // On a session old enough to renew, the keepalive renews it; with the session
        // expired, a handshake carries it.
        t.keepalive_sent(s(119));
        assert_eq!(t.due(s(144), 0), Some(Due::Initiate), "keepalive due on a session 144 s old");
        t.initiation_sent(s(144));
        assert_eq!(t.due(s(240), 0), Some(Due::GiveUp), "unanswered for 90 s");
        assert_eq!(t.due(s(240), 0), Some(Due::Expire), "the session, 240 s old");
        assert_eq!(t.due(s(240), 0), Some(Due::Initiate), "no session: a handshake carries the keepalive");
        // Without one configured, a silent side stays silent.
        let mut quiet = Timers::default();
        quiet.session_started(t0, true);
        assert_eq!(quiet.due(s(60), 0), None);
    }
}
