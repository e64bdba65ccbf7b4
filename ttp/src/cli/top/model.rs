//! What `ttp top` shows, computed from the daemon's snapshots: rates from the difference
//! of two snapshots, a few minutes of history, the stream table sorted and filtered. No
//! terminal and no socket here, so it is tested on its own.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Instant,
};

use ttp::control::proto::{Status, StreamSnapshot};

/// Seconds of traffic history kept (the sparklines show what fits of it).
pub const HISTORY: usize = 600;
/// Log lines kept for the log pane.
pub const LOG_LINES: usize = 200;

/// One poll of the daemon (and of what `ttp top` reads itself).
pub struct Fetched {
    pub at: Instant,
    /// The daemon's answer, or why there is none.
    pub daemon: Result<Daemon, String>,
    /// The last lines of the daemon's log, or why it cannot be read.
    pub log: Result<Vec<String>, String>,
    /// Without a daemon: what the pins say (the kill-switch holding the host closed, and
    /// the monitor's record of why).
    pub pinned: Option<Pinned>,
}

pub struct Daemon {
    pub status: Status,
    pub streams: Vec<StreamSnapshot>,
    /// The daemon's CPU time so far, in seconds (from /proc, when readable).
    pub cpu_secs: Option<f64>,
    /// Who had what refused (the status's refusals, with names for uids and cgroups).
    pub refusals: Vec<Who>,
}

/// Who had something refused, as the kill-switch pane names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The counter's name.
    pub counter: String,
    /// `alice (1000) /user.slice/.../app.scope`, or numbers where names are unknown.
    pub who: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pinned {
    pub lockdown: bool,
    pub fault: Option<String>,
}

/// A stream as the table shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRow {
    pub snap: StreamSnapshot,
    /// Bytes per second, both ways together, since the previous poll.
    pub rate: f64,
}

/// One kernel counter as the kill-switch pane shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterRow {
    pub name: String,
    pub total: u64,
    pub per_sec: f64,
    /// Something was stopped: a refusal or a drop.
    pub refusal: bool,
}

/// A tunnel peer with its rates.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRow {
    pub peer: ttp::control::proto::PeerStatus,
    pub rx_per_sec: f64,
    pub tx_per_sec: f64,
}

/// The stream table's sort column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    #[default]
    Rate,
    Bytes,
    Age,
    Destination,
    Circuit,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Rate => SortBy::Bytes,
            SortBy::Bytes => SortBy::Age,
            SortBy::Age => SortBy::Destination,
            SortBy::Destination => SortBy::Circuit,
            SortBy::Circuit => SortBy::Rate,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Rate => "rate",
            SortBy::Bytes => "bytes",
            SortBy::Age => "age",
            SortBy::Destination => "destination",
            SortBy::Circuit => "circuit",
        }
    }
}

/// The previous poll, for rates.
struct Previous {
    at: Instant,
    bytes: (u64, u64),
    counters: BTreeMap<String, u64>,
    streams: HashMap<u64, u64>,
    last_id: Option<u64>,
    dns: Option<(u64, u64)>,
    cpu_secs: Option<f64>,
    peers: HashMap<String, (u64, u64)>,
}

#[derive(Default)]
pub struct Model {
    pub status: Option<Status>,
    /// Why the daemon did not answer the last poll.
    pub error: Option<String>,
    pub pinned: Option<Pinned>,
    pub streams: Vec<StreamRow>,
    /// Bytes per second through Tor, oldest first: to Tor (up) and to applications (down).
    pub up: VecDeque<u64>,
    pub down: VecDeque<u64>,
    pub opened_per_sec: f64,
    pub counters: Vec<CounterRow>,
    pub refusals: Vec<Who>,
    pub dns_per_sec: f64,
    /// Cache hits among the queries since the previous poll (none: no query).
    pub dns_hit_rate: Option<f64>,
    pub cpu_percent: Option<f64>,
    /// Seconds since the exit was verified.
    pub exit_checked: Option<u64>,
    pub peers: Vec<PeerRow>,
    /// Machines behind the gateway with open streams: address, streams, bytes per second.
    pub clients: Vec<(String, usize, f64)>,
    /// The log's last lines, or why they cannot be read.
    pub log: Vec<String>,
    pub log_error: Option<String>,
    previous: Option<Previous>,
}

/// Rate of a counter that went from `a` to `b` in `secs` (a restarted daemon's counters
/// start again from 0: no negative rates).
fn rate(a: u64, b: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        b.saturating_sub(a) as f64 / secs
    }
}

/// Counters that count something stopped, by their names.
pub fn is_refusal(name: &str) -> bool {
    ["refused", "dropped", "no_listener", "table_full"].iter().any(|w| name.contains(w))
}

fn push(h: &mut VecDeque<u64>, v: u64) {
    if h.len() == HISTORY {
        h.pop_front();
    }
    h.push_back(v);
}

impl Model {
    /// Takes one poll in.
    pub fn update(&mut self, f: Fetched) {
        match f.log {
            Ok(log) => (self.log, self.log_error) = (log, None),
            Err(e) => (self.log, self.log_error) = (Vec::new(), Some(e)),
        }
        self.pinned = f.pinned;
        let d = match f.daemon {
            Ok(d) => d,
            Err(e) => {
                self.error = Some(e);
                self.status = None;
                self.streams.clear();
                self.peers.clear();
                self.cpu_percent = None;
                // Rates start again with the next daemon.
                self.previous = None;
                return;
            }
        };
        self.error = None;
        let s = &d.status;
        let prev = self.previous.take();
        let secs = prev.as_ref().map_or(0.0, |p| f.at.duration_since(p.at).as_secs_f64());
        let p = prev.as_ref();

        if let Some(p) = p {
            push(&mut self.up, rate(p.bytes.0, s.bytes_up, secs) as u64);
            push(&mut self.down, rate(p.bytes.1, s.bytes_down, secs) as u64);
        }

        let mut streams: Vec<StreamRow> = d
            .streams
            .iter()
            .map(|snap| {
                let both = snap.bytes_up + snap.bytes_down;
                let before = p.and_then(|p| p.streams.get(&snap.id).copied());
                // A stream new since the previous poll: its bytes came within `secs`.
                let rate = match (before, p) {
                    (Some(b), _) => rate(b, both, secs),
                    (None, Some(_)) => rate(0, both, secs),
                    (None, None) => 0.0,
                };
                StreamRow { snap: snap.clone(), rate }
            })
            .collect();
        streams.sort_by_key(|r| r.snap.id);
        let last_id = d.streams.iter().map(|s| s.id).max().or(p.and_then(|p| p.last_id));
        self.opened_per_sec = match (p.and_then(|p| p.last_id), last_id) {
            (Some(a), Some(b)) => rate(a, b, secs),
            // The first streams since start: ids count from 0.
            (None, Some(b)) if p.is_some() => rate(0, b + 1, secs),
            _ => 0.0,
        };
        let mut clients: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for r in &streams {
            // The label both proxy ports give a gateway client's streams.
            if let Some(addr) = r.snap.isolation.strip_prefix("gateway client ") {
                let c = clients.entry(addr.to_string()).or_default();
                c.0 += 1;
                c.1 += r.rate;
            }
        }
        self.clients = clients.into_iter().map(|(a, (n, rate))| (a, n, rate)).collect();
        self.streams = streams;
        self.refusals = d.refusals;

        self.counters = s
            .counters
            .iter()
            .map(|(name, &total)| CounterRow {
                name: name.clone(),
                total,
                per_sec: p.and_then(|p| p.counters.get(name)).map_or(0.0, |&a| rate(a, total, secs)),
                refusal: is_refusal(name),
            })
            .collect();

        let dns = s.dns.as_ref().map(|d| (d.queries, d.cache_hits));
        match (p.and_then(|p| p.dns), dns) {
            (Some((q0, h0)), Some((q1, h1))) => {
                self.dns_per_sec = rate(q0, q1, secs);
                let q = q1.saturating_sub(q0);
                self.dns_hit_rate = (q > 0).then(|| h1.saturating_sub(h0) as f64 / q as f64);
            }
            _ => {
                self.dns_per_sec = 0.0;
                self.dns_hit_rate = None;
            }
        }

        self.cpu_percent = match (p.and_then(|p| p.cpu_secs), d.cpu_secs) {
            (Some(a), Some(b)) if secs > 0.0 => Some(((b - a).max(0.0) / secs) * 100.0),
            _ => None,
        };

        self.peers = s
            .tunnel_peers
            .iter()
            .map(|peer| {
                let before = p.and_then(|p| p.peers.get(&peer.public_key).copied());
                let (rx, tx) = match before {
                    Some((rx, tx)) => (rate(rx, peer.rx_bytes, secs), rate(tx, peer.tx_bytes, secs)),
                    None => (0.0, 0.0),
                };
                PeerRow { peer: peer.clone(), rx_per_sec: rx, tx_per_sec: tx }
            })
            .collect();

        self.exit_checked = s.exit_checked_unix.map(|t| ttp::control::unix_now().saturating_sub(t));
        self.previous = Some(Previous {
            at: f.at,
            bytes: (s.bytes_up, s.bytes_down),
            counters: s.counters.clone(),
            streams: d.streams.iter().map(|s| (s.id, s.bytes_up + s.bytes_down)).collect(),
            last_id,
            dns,
            cpu_secs: d.cpu_secs,
            peers: s.tunnel_peers.iter().map(|p| (p.public_key.clone(), (p.rx_bytes, p.tx_bytes))).collect(),
        });
        self.status = Some(d.status);
    }

    /// The stream table's rows: those matching `filter` (in destination, isolation,
    /// circuit or relays; case-insensitive), sorted by `sort`, largest first.
    pub fn visible(&self, sort: SortBy, filter: &str) -> Vec<&StreamRow> {
        let filter = filter.to_ascii_lowercase();
        let mut rows: Vec<&StreamRow> = self
            .streams
            .iter()
            .filter(|r| {
                filter.is_empty()
                    || [&r.snap.destination, &r.snap.isolation, &r.snap.circuit]
                        .iter()
                        .chain(r.snap.relays.iter().collect::<Vec<_>>().iter())
                        .any(|f| f.to_ascii_lowercase().contains(&filter))
            })
            .collect();
        match sort {
            SortBy::Rate => rows.sort_by(|a, b| b.rate.total_cmp(&a.rate).then(a.snap.id.cmp(&b.snap.id))),
            SortBy::Bytes => rows.sort_by_key(|r| std::cmp::Reverse(r.snap.bytes_up + r.snap.bytes_down)),
            SortBy::Age => rows.sort_by_key(|r| std::cmp::Reverse(r.snap.age_secs)),
            SortBy::Destination => rows.sort_by(|a, b| a.snap.destination.cmp(&b.snap.destination)),
            SortBy::Circuit => rows.sort_by(|a, b| a.snap.circuit.cmp(&b.snap.circuit)),
        }
        rows
    }
}

/// Bytes as people read them: 1.2 KB, 3.4 MB (powers of 1000, as `ttp status` users
/// compare with their network's figures).
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration as `1h02m`, `3m05s` or `42s`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
pub mod tests {
    use std::time::Duration;

    use ttp::control::proto::{DnsStatus, Ports};

    use super::*;

    pub fn status(up: u64, down: u64, counters: &[(&str, u64)], dns: (u64, u64)) -> Status {
        Status {
            state: "running".into(),
            pid: 42,
            uptime_secs: 3700,
            started_unix: 0,
            ports: Ports { trans: 9040, dns: 9053, socks: 9050 },
            bootstrap: "done".into(),
            waiting: None,
            tor_ready: true,
            streams_open: 1,
            streams_refused: 0,
            bytes_up: up,
            bytes_down: down,
            exit_address: Some("10.0.0.9".into()),
            exit_checked_unix: None,
            check_urls: Vec::new(),
            counters: counters.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            refusals: Vec::new(),
            tunnel_peers: Vec::new(),
            load: None,
            memory: None,
            bridges: None,
            dns: Some(DnsStatus { queries: dns.0, cache_hits: dns.1, ..Default::default() }),
            gateway_interfaces: Vec::new(),
            gateway_present: Vec::new(),
        }
    }

    pub fn stream(id: u64, dest: &str, bytes: u64) -> StreamSnapshot {
        StreamSnapshot {
            id,
            destination: dest.into(),
            isolation: "uid 1000".into(),
            circuit: format!("Circ 1.{id}"),
            relays: vec!["AAAA0001".into(), "BBBB0002".into(), "CCCC0003".into()],
            open: true,
            age_secs: 10 + id,
            bytes_up: 0,
            bytes_down: bytes,
        }
    }

    fn poll(at: Instant, status: Status, streams: Vec<StreamSnapshot>) -> Fetched {
        Fetched {
            at,
            daemon: Ok(Daemon { status, streams, cpu_secs: Some(1.0), refusals: Vec::new() }),
            log: Ok(vec![]),
            pinned: None,
        }
    }

    #[test]
    fn rates_come_from_two_polls_and_a_new_daemon_starts_them_again() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let mut m = Model::default();
        m.update(poll(t0, status(0, 1000, &[("udp_refused", 3)], (10, 5)), vec![stream(0, "a:443", 1000)]));
        assert!(m.up.is_empty() && m.streams[0].rate == 0.0, "one poll gives no rate");
        m.update(poll(
            t1,
            status(200, 5000, &[("udp_refused", 7)], (20, 10)),
            vec![stream(0, "a:443", 3000), stream(1, "b:80", 2000), stream(2, "c:80", 0)],
        ));
        assert_eq!(m.up.back(), Some(&100));
        assert_eq!(m.down.back(), Some(&2000));
        assert_eq!(m.opened_per_sec, 1.0);
        assert_eq!(m.streams.iter().map(|r| r.rate).collect::<Vec<_>>(), vec![1000.0, 1000.0, 0.0]);
        let udp = &m.counters[0];
        assert!(udp.refusal && udp.total == 7 && udp.per_sec == 2.0);
        assert_eq!((m.dns_per_sec, m.dns_hit_rate), (5.0, Some(0.5)));
        assert_eq!(m.cpu_percent, Some(0.0));
        // The daemon goes away: no stale figures; a new one starts the rates afresh.
        m.update(Fetched { at: t1, daemon: Err("gone".into()), log: Ok(vec![]), pinned: None });
        assert!(m.status.is_none() && m.streams.is_empty() && m.error.is_some());
        m.update(poll(t1 + Duration::from_secs(1), status(0, 0, &[("udp_refused", 0)], (0, 0)), vec![]));
        assert_eq!(m.counters[0].per_sec, 0.0);
    }

    #[test]
    fn gateway_clients_are_counted_from_their_streams() {
        let t0 = Instant::now();
        let mut m = Model::default();
        let client =
            |id, addr: &str| StreamSnapshot { isolation: format!("gateway client {addr}"), ..stream(id, "x:80", 0) };
        m.update(poll(
            t0,
            status(0, 0, &[], (0, 0)),
            vec![client(0, "10.77.0.5"), client(1, "10.77.0.5"), client(2, "10.77.0.6"), stream(3, "y:80", 0)],
        ));
        assert_eq!(m.clients, vec![("10.77.0.5".to_string(), 2, 0.0), ("10.77.0.6".to_string(), 1, 0.0)]);
    }

    #[test]
    fn the_table_sorts_and_filters() {
        let t0 = Instant::now();
        let mut m = Model::default();
        m.update(poll(t0, status(0, 0, &[], (0, 0)), vec![stream(0, "zeta.org:443", 0), stream(1, "alpha.org:80", 0)]));
        m.update(poll(
            t0 + Duration::from_secs(1),
            status(0, 0, &[], (0, 0)),
            vec![stream(0, "zeta.org:443", 50), stream(1, "alpha.org:80", 10)],
        ));
        let ids = |rows: Vec<&StreamRow>| rows.iter().map(|r| r.snap.id).collect::<Vec<_>>();
        assert_eq!(ids(m.visible(SortBy::Rate, "")), vec![0, 1]);
        assert_eq!(ids(m.visible(SortBy::Destination, "")), vec![1, 0]);
        assert_eq!(ids(m.visible(SortBy::Age, "")), vec![1, 0]);
        assert_eq!(ids(m.visible(SortBy::Rate, "ALPHA")), vec![1]);
        assert_eq!(ids(m.visible(SortBy::Rate, "bbbb0002")).len(), 2, "relays are searched too");
        assert!(m.visible(SortBy::Rate, "nothing").is_empty());
    }

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(bytes(999.0), "999 B");
        assert_eq!(bytes(1234.0), "1.2 KB");
        assert_eq!(bytes(5_600_000.0), "5.6 MB");
        assert_eq!(age(42), "42s");
        assert_eq!(age(185), "3m05s");
        assert_eq!(age(3720), "1h02m");
        assert!(is_refusal("skb_dropped_tcp") && is_refusal("udp_refused") && !is_refusal("tcp_redirected"));
    }
}
