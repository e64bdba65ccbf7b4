//! The exits' view of each circuit's congestion control, read from C tor's `[circ]info`
//! log (the private network writes it with `TESTNET_EXIT_LOG="[circ]info"`).
//!
//! For every circuit SENDME it receives, a C tor exit logs the circuit and its Vegas
//! state on two lines:
//!
//! ```text
//! Dec 05 08:01:40.123 [info] congestion_control_update_circuit_bdp(): CC: Circuit 4:-1284422103 SENDME RTT: 8, 20, 19, 45, 410
//! Dec 05 08:01:40.123 [info] congestion_control_vegas_process_sendme(): CC: TOR_VEGAS RTT: 8, 20, 45, CWND: 413, INFL: 400, VBDP: 198, QUSE: 215, BWE: 10000, SS: 0
//! ```
//!
//! `bench tor` uses this to tell how many circuits carried one client's download and
//! what window the exit gave each: the throughput of a Tor client is set there, at the
//! far end, by Vegas. Written by hand: no library reads tor's log lines.

use std::collections::BTreeMap;

/// One circuit SENDME as the exit saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When it was logged: seconds since the local midnight (tor logs local time).
    pub at: f64,
    /// The exit's name for the circuit (`channel:circuit id`).
    pub circuit: String,
    /// Smallest round-trip time seen on the circuit, ms.
    pub min_rtt_ms: u64,
    /// Smoothed round-trip time, ms.
    pub rtt_ms: u64,
    /// Congestion window, cells.
    pub cwnd: u64,
    /// Vegas' estimate of the cells queued along the path.
    pub queue: u64,
}

/// Reads the samples of one exit's log; other lines are skipped.
pub fn parse(log: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut circuit: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split_once("CC: Circuit ").map(|(_, r)| r) {
            if line.contains("SENDME RTT:") {
                circuit = rest.split_whitespace().next().map(str::to_owned);
            }
            continue;
        }
        let Some(vegas) = line.split_once("CC: TOR_VEGAS RTT: ").map(|(_, r)| r) else { continue };
        let (Some(circuit), Some(at)) = (circuit.take(), line.split_whitespace().nth(2).and_then(seconds_of_day))
        else {
            continue;
        };
        // "8, 20, 45, CWND: 413, INFL: 400, VBDP: 198, QUSE: 215, ...": min, smoothed, max RTT.
        let mut rtts = vegas.split(',').map(|f| f.trim().parse::<u64>().ok());
        let field = |name: &str| {
            vegas.split_once(name).and_then(|(_, r)| r.split(',').next()).and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(Some(min_rtt_ms)), Some(Some(rtt_ms)), Some(cwnd), Some(queue)) =
            (rtts.next(), rtts.next(), field("CWND: "), field("QUSE: "))
        {
            // Tor computes the queue as cwnd - BDP in unsigned arithmetic: when its BDP
            // estimate exceeds the window (RTT below the old minimum), it logs a wrapped
            // number near 2^64. Nothing is queued then.
            let queue = if queue > cwnd { 0 } else { queue };
            out.push(Sample { at, circuit, min_rtt_ms, rtt_ms, cwnd, queue });
        }
    }
    out
}

/// `HH:MM:SS.mmm` (or `HH:MM:SS`) as seconds since midnight.
fn seconds_of_day(t: &str) -> Option<f64> {
    let mut f = t.split(':');
    let (h, m, s) = (f.next()?.parse::<f64>().ok()?, f.next()?.parse::<f64>().ok()?, f.next()?.parse::<f64>().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// One circuit's part in a transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct Leg {
    pub circuit: String,
    pub sendmes: usize,
    /// The circuit's smallest RTT by the end of the transfer: the path without queues.
    pub min_rtt_ms: u64,
    pub mean_rtt_ms: f64,
    pub mean_cwnd: f64,
    pub mean_queue: f64,
}

impl Leg {
    /// What the window allows per round trip, MB/s (a relay cell carries 498 bytes).
    pub fn window_rate_mb_s(&self) -> f64 {
        if self.mean_rtt_ms == 0.0 {
            return 0.0;
        }
        self.mean_cwnd * 498.0 / (self.mean_rtt_ms / 1000.0) / 1e6
    }
}

/// The circuits among `samples` that carried a transfer between `from` and `to` (seconds
/// since midnight), in order of their first SENDME. A circuit with under a twentieth of
/// the window's SENDMEs is left out: other traffic in the same seconds (a directory
/// fetch, the tail of the previous transfer) brings a handful, where a transfer's
/// circuits bring thousands.
pub fn legs<'a>(samples: impl IntoIterator<Item = &'a Sample>, from: f64, to: f64) -> Vec<Leg> {
    let mut by: BTreeMap<&str, (f64, Vec<&Sample>)> = BTreeMap::new();
    for s in samples.into_iter().filter(|s| s.at >= from && s.at <= to) {
        by.entry(&s.circuit).or_insert((s.at, Vec::new())).1.push(s);
    }
    let mut legs: Vec<(f64, Leg)> = by
        .into_iter()
        .map(|(circuit, (first, v))| {
            let n = v.len() as f64;
            let mean = |f: fn(&Sample) -> u64| v.iter().map(|s| f(s) as f64).sum::<f64>() / n;
            let leg = Leg {
                circuit: circuit.to_owned(),
                sendmes: v.len(),
                min_rtt_ms: v.iter().map(|s| s.min_rtt_ms).min().unwrap_or_default(),
                mean_rtt_ms: mean(|s| s.rtt_ms),
                mean_cwnd: mean(|s| s.cwnd),
                mean_queue: mean(|s| s.queue),
            };
            (first, leg)
        })
        .collect();
    let total: usize = legs.iter().map(|(_, l)| l.sendmes).sum();
    legs.retain(|(_, l)| l.sendmes * 20 >= total);
    legs.sort_by(|a, b| a.0.total_cmp(&b.0));
    legs.into_iter().map(|(_, l)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
Dec 05 08:01:40.100 [info] congestion_control_update_circuit_bdp(): CC: Circuit 4:-12 SENDME RTT: 8, 20, 19, 45, 410
Dec 05 08:01:40.100 [info] congestion_control_vegas_process_sendme(): CC: TOR_VEGAS RTT: 8, 20, 45, CWND: 400, INFL: 400, VBDP: 198, QUSE: 215, BWE: 10000, SS: 0
Dec 05 08:01:40.200 [notice] Something else entirely.
Dec 05 08:01:40.300 [info] congestion_control_update_circuit_bdp(): CC: Circuit 3:77 SENDME RTT: 9, 30, 29, 45, 300
Dec 05 08:01:40.300 [info] congestion_control_vegas_process_sendme(): CC: TOR_VEGAS RTT: 9, 30, 45, CWND: 300, INFL: 290, VBDP: 90, QUSE: 210, BWE: 5000, SS: 1
Dec 05 08:01:40.400 [info] congestion_control_update_circuit_bdp(): CC: Circuit 4:-12 SENDME RTT: 8, 10, 19, 45, 410
Dec 05 08:01:40.400 [info] congestion_control_vegas_process_sendme(): CC: TOR_VEGAS RTT: 8, 10, 45, CWND: 500, INFL: 480, VBDP: 300, QUSE: 200, BWE: 20000, SS: 0
Dec 05 08:01:41.000 [info] congestion_control_vegas_process_sendme(): CC: TOR_VEGAS RTT: 8, 10, 45, CWND: 1, INFL: 1, VBDP: 1, QUSE: 1, BWE: 1, SS: 0
Dec 05 08:01:42.000 [info] congestion_control_update_circuit_bdp(): CC: Circuit 3:77 SENDME RTT: 7, 7, 29, 45, 300
Dec 05 08:01:42.000 [info] congestion_control_vegas_process_sendme(): CC: TOR_VEGAS RTT: 7, 7, 45, CWND: 300, INFL: 290, VBDP: 310, QUSE: 18446744073709551606, BWE: 5000, SS: 0
";

    #[test]
    fn pairs_each_vegas_line_with_its_circuit() {
        let s = parse(LOG);
        // The Vegas line at :41 has no SENDME line before it: not attributed to anyone.
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            Sample {
                at: 8.0 * 3600.0 + 60.0 + 40.1,
                circuit: "4:-12".into(),
                min_rtt_ms: 8,
                rtt_ms: 20,
                cwnd: 400,
                queue: 215
            }
        );
        assert_eq!((s[1].circuit.as_str(), s[1].cwnd, s[1].rtt_ms), ("3:77", 300, 30));
        // A queue estimate wrapped below zero is an empty queue.
        assert_eq!((s[3].cwnd, s[3].queue), (300, 0));
    }

    #[test]
    fn legs_are_the_circuits_inside_the_window() {
        let s = parse(LOG);
        let t = |x: f64| 8.0 * 3600.0 + 60.0 + x;
        let l = legs(&s, t(40.0), t(40.5));
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].circuit.as_str(), l[0].sendmes, l[0].mean_cwnd, l[0].mean_rtt_ms), ("4:-12", 2, 450.0, 15.0));
        assert_eq!((l[0].min_rtt_ms, l[0].mean_queue), (8, 207.5));
        // 450 cells of 498 bytes per 15 ms.
        assert!((l[0].window_rate_mb_s() - 14.94).abs() < 0.01);
        assert_eq!(legs(&s, t(40.25), t(40.35)).len(), 1);
        assert!(legs(&s, t(41.0), t(41.5)).is_empty());
    }

    #[test]
    fn a_circuit_with_under_a_twentieth_of_the_sendmes_is_not_a_leg() {
        let sample = |i: usize, circuit: &str| Sample {
            at: i as f64,
            circuit: circuit.into(),
            min_rtt_ms: 8,
            rtt_ms: 20,
            cwnd: 400,
            queue: 200,
        };
        let mut s: Vec<Sample> = (0..19).map(|i| sample(i, "download")).collect();
        s.push(sample(19, "stray"));
        // 1 of 20: exactly a twentieth, kept.
        assert_eq!(legs(&s, 0.0, 100.0).len(), 2);
        s.push(sample(20, "download"));
        // 1 of 21: under it, left out.
        let l = legs(&s, 0.0, 100.0);
        assert_eq!((l.len(), l[0].circuit.as_str(), l[0].sendmes), (1, "download", 20));
    }
}
