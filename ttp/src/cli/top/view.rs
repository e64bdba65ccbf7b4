//! How `ttp top` draws the [`Model`]: one screen of panes, readable at 80x24 and using
//! more room when there is more. Drawing only: what the keys do is in `mod.rs`.

use ratatui::{
    layout::{Constraint, Direction, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap},
    Frame,
};

use super::model::{age, bytes, Model, SortBy};

/// The panes that take keys (arrows, page up/down): tab moves between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Focus {
    #[default]
    Streams,
    KillSwitch,
    Log,
}

impl Focus {
    pub fn next(self) -> Focus {
        match self {
            Focus::Streams => Focus::KillSwitch,
            Focus::KillSwitch => Focus::Log,
            Focus::Log => Focus::Streams,
        }
    }
}

/// What the screen shows besides the model: the user's choices and passing messages.
#[derive(Default)]
pub struct Ui {
    pub focus: Focus,
    pub sort: SortBy,
    pub filter: String,
    /// Typing a filter after `/`.
    pub editing_filter: bool,
    /// The selected stream, by id (it keeps its place as the table changes).
    pub selected: Option<u64>,
    /// Lines scrolled up from the latest, in the log pane; rows down, in the kill-switch
    /// pane.
    pub log_scroll: usize,
    pub counter_scroll: usize,
    pub help: bool,
    pub confirm_stop: bool,
    /// A message for the footer (what a key did, or why it did nothing).
    pub flash: Option<String>,
    pub root: bool,
}

const REFUSAL: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const TITLE: Style = Style::new().add_modifier(Modifier::BOLD);

fn block(title: &str, focused: bool) -> Block<'_> {
    let style = if focused { Style::new().fg(Color::Cyan) } else { Style::new() };
    Block::default().borders(Borders::ALL).border_style(style).title(Span::styled(format!(" {title} "), TITLE))
}

pub fn draw(f: &mut Frame, m: &Model, ui: &mut Ui) {
    let area = f.area();
    let gateways = m.status.as_ref().is_some_and(|s| !s.gateway_interfaces.is_empty());
    let tunnel = gateways || !m.peers.is_empty();
    // Borders, the interfaces and clients lines, up to four peers.
    let peers_height = if tunnel { 2 + 2 * u16::from(gateways) + m.peers.len().min(4) as u16 } else { 0 };
    let log_height = if area.height >= 40 { 10 } else { 5 };
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(3),
            Constraint::Length(7),
            Constraint::Min(4),
            Constraint::Length(peers_height),
            Constraint::Length(log_height),
            Constraint::Length(1),
        ])
        .split(area);
    header(f, rows[0], m, ui);
    let middle = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(40), Constraint::Percentage(27), Constraint::Percentage(33)])
        .split(rows[1]);
    traffic(f, middle[0], m);
    dns(f, middle[1], m);
    killswitch(f, middle[2], m, ui);
    streams(f, rows[2], m, ui);
    if tunnel {
        peers(f, rows[3], m);
    }
    log(f, rows[4], m, ui);
    footer(f, rows[5], ui);
    if ui.help {
        help(f, area);
    }
    if ui.confirm_stop {
        confirm(f, area);
    }
}

fn header(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let mut lines = Vec::new();
    match &m.status {
        Some(s) => {
            // Arti's words up to the first `;` (the rest, the directory's validity, is
            // `ttp status`'s to say).
            let boot = format!("Tor {}", s.bootstrap.split(';').next().unwrap_or_default());
            let tor = Span::styled(boot, Style::new().fg(if s.tor_ready { Color::Green } else { Color::Yellow }));
            lines.push(Line::from(vec![
                Span::styled("ttp ", TITLE),
                Span::styled(s.state.clone(), Style::new().fg(Color::Green)),
                Span::raw(format!(" up {}  ", age(s.uptime_secs))),
                tor,
                Span::raw("  kill-switch "),
                Span::styled("on", Style::new().fg(Color::Green)),
            ]));
            let checked = m.exit_checked.map(|secs| format!(" (checked {} ago)", age(secs))).unwrap_or_default();
            let exit = match &s.exit_address {
                Some(a) => format!("exit {a}{checked}"),
                None => "exit not verified yet (ttp check)".to_string(),
            };
            let bridges = s.bridges.as_ref().map(|b| format!("  bridges {b}")).unwrap_or_default();
            lines.push(Line::from(format!(
                "{exit}  ports trans {} dns {} socks {}{bridges}",
                s.ports.trans, s.ports.dns, s.ports.socks
            )));
            let mut third = vec![];
            if let Some(w) = &s.waiting {
                third.push(Span::styled(format!("waiting: {w}"), Style::new().fg(Color::Yellow)));
            } else {
                let cpu = m.cpu_percent.map_or("cpu -".to_string(), |c| format!("cpu {c:.0}%"));
                let mem = s.memory.map_or(String::new(), |mem| format!("  mem {} PSS", bytes(mem.pss_bytes as f64)));
                let fds = s
                    .load
                    .as_ref()
                    .map_or(String::new(), |l| format!("  fds {}/{}", l.descriptors_open, l.budget.nofile));
                third.push(Span::raw(format!("daemon pid {}: {cpu}{mem}{fds}", s.pid)));
                if !ui.root {
                    third.push(Span::styled("  read-only (ttp group)", Style::new().fg(Color::Yellow)));
                }
            }
            lines.push(Line::from(third));
        }
        None => {
            let (state, why) = match &m.pinned {
                Some(p) => (
                    if p.lockdown { "lockdown" } else { "daemon dead" },
                    "the kill-switch holds the host closed; `sudo ttp stop` opens it, `sudo ttp start` restarts",
                ),
                None => ("not running", "`sudo ttp start` starts it"),
            };
            lines.push(Line::from(vec![
                Span::styled("ttp ", TITLE),
                Span::styled(state, REFUSAL),
                Span::raw(format!("  {why}")),
            ]));
            if let Some(fault) = m.pinned.as_ref().and_then(|p| p.fault.clone()) {
                lines.push(Line::from(Span::styled(format!("fault: {fault}"), REFUSAL)));
            }
            if let Some(e) = &m.error {
                lines.push(Line::from(format!("daemon: {e}")));
            }
        }
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), area);
}

/// The latest `width` values of `h`.
fn tail(h: &std::collections::VecDeque<u64>, width: u16) -> Vec<u64> {
    let n = h.len().saturating_sub(width as usize);
    h.iter().skip(n).copied().collect()
}

fn traffic(f: &mut Frame, area: Rect, m: &Model) {
    let b = block("Traffic through Tor", false);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let rows = Layout::default().direction(Direction::Vertical).constraints([Constraint::Length(1); 5]).split(inner);
    let now = |h: &std::collections::VecDeque<u64>| bytes(h.back().copied().unwrap_or(0) as f64);
    f.render_widget(Paragraph::new(format!("down {}/s", now(&m.down))), rows[0]);
    let down = tail(&m.down, rows[1].width);
    f.render_widget(Sparkline::default().data(&down).style(Style::new().fg(Color::Green)), rows[1]);
    f.render_widget(Paragraph::new(format!("up   {}/s", now(&m.up))), rows[2]);
    let up = tail(&m.up, rows[3].width);
    f.render_widget(Sparkline::default().data(&up).style(Style::new().fg(Color::Blue)), rows[3]);
    if let Some(s) = &m.status {
        let refused = s.streams_refused + s.load.as_ref().map_or(0, |l| l.refused_share);
        let style = if refused > 0 { REFUSAL } else { Style::new() };
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::raw(format!("{} open, {:.1} new/s, ", s.streams_open, m.opened_per_sec)),
                Span::styled(format!("{refused} refused"), style),
            ])),
            rows[4],
        );
    }
}

fn dns(f: &mut Frame, area: Rect, m: &Model) {
    let mut lines = Vec::new();
    if let Some(d) = m.status.as_ref().and_then(|s| s.dns.as_ref()) {
        let hits = m.dns_hit_rate.map_or("-".to_string(), |h| format!("{:.0}%", h * 100.0));
        lines.push(Line::from(format!("{:.1} q/s, cached {hits}", m.dns_per_sec)));
        lines.push(Line::from(format!("{} queries", d.queries)));
        lines.push(Line::from(format!("via Tor: {} in flight", d.tor_in_flight)));
        let style = if d.refused + d.failed > 0 { Style::new().fg(Color::Yellow) } else { Style::new() };
        lines.push(Line::from(Span::styled(format!("refused {}, failed {}", d.refused, d.failed), style)));
        lines.push(Line::from(format!(".onion mapped: {}", d.automap_entries)));
    }
    f.render_widget(Paragraph::new(lines).block(block("DNS", false)), area);
}

fn killswitch(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    // What was stopped first (recent refusals on top), then what passed.
    let mut rows: Vec<_> = m.counters.iter().filter(|c| c.total > 0).collect();
    rows.sort_by(|a, b| (b.refusal, b.per_sec > 0.0).cmp(&(a.refusal, a.per_sec > 0.0)).then(b.total.cmp(&a.total)));
    let width = area.width.saturating_sub(2) as usize;
    let row = |name: &str, figures: String, style: Style| {
        let name_width = width.saturating_sub(figures.len() + 1);
        Line::from(Span::styled(format!("{name:<name_width$.name_width$} {figures}"), style))
    };
    let mut lines = Vec::new();
    for c in &rows {
        let figures = if c.per_sec > 0.0 { format!("{} +{:.0}/s", c.total, c.per_sec) } else { c.total.to_string() };
        let style = match (c.refusal, c.per_sec > 0.0) {
            (true, true) => REFUSAL.add_modifier(Modifier::REVERSED),
            (true, false) => Style::new().fg(Color::Red),
            _ => Style::new(),
        };
        lines.push(row(&c.name, figures, style));
        // Who tried: the two who tried most, under what they tried.
        for w in m.refusals.iter().filter(|w| w.counter == c.name).take(2) {
            lines.push(row(&format!(" by {}", w.who), w.count.to_string(), Style::new().fg(Color::Red)));
        }
    }
    let lines: Vec<Line> = lines.into_iter().skip(ui.counter_scroll).collect();
    let lines = if lines.is_empty() { vec![Line::from("nothing counted yet")] } else { lines };
    f.render_widget(Paragraph::new(lines).block(block("Kill-switch", ui.focus == Focus::KillSwitch)), area);
}

fn streams(f: &mut Frame, area: Rect, m: &Model, ui: &mut Ui) {
    let visible = m.visible(ui.sort, &ui.filter);
    if ui.selected.is_none_or(|id| !visible.iter().any(|r| r.snap.id == id)) {
        ui.selected = visible.first().map(|r| r.snap.id);
    }
    let selected = visible.iter().position(|r| Some(r.snap.id) == ui.selected);
    let header = Row::new(["destination", "isolation", "circuit", "age", "rate", "bytes"])
        .style(TITLE.add_modifier(Modifier::UNDERLINED));
    let rows = visible.iter().map(|r| {
        let s = &r.snap;
        // Arti's id ("Circ 3.1": the number is enough here), then the relays.
        let id = s.circuit.trim_start_matches("Circ ");
        let circuit = if s.relays.is_empty() { id.to_string() } else { format!("{id} {}", s.relays.join(">")) };
        Row::new([
            Cell::from(s.destination.clone()),
            Cell::from(s.isolation.clone()),
            Cell::from(circuit),
            Cell::from(age(s.age_secs)),
            Cell::from(format!("{}/s", bytes(r.rate))),
            Cell::from(bytes((s.bytes_up + s.bytes_down) as f64)),
        ])
    });
    let widths = [
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Fill(3),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(9),
    ];
    let filter = if ui.editing_filter || !ui.filter.is_empty() {
        format!(", filter /{}{}", ui.filter, if ui.editing_filter { "_" } else { "" })
    } else {
        String::new()
    };
    let title = format!("Streams: {} shown, by {}{filter}", visible.len(), ui.sort.name());
    let mut b = block(&title, ui.focus == Focus::Streams);
    if let Some(r) = selected.map(|i| visible[i]) {
        let s = &r.snap;
        b = b.title_bottom(Line::from(format!(
            " #{} {} on {} ({}) ",
            s.id,
            s.destination,
            s.circuit,
            if s.relays.is_empty() { "relays unknown".to_string() } else { s.relays.join(" > ") }
        )));
    }
    let table = Table::new(rows, widths)
        .header(header)
        .block(b)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(selected);
    f.render_stateful_widget(table, area, &mut state);
}

fn peers(f: &mut Frame, area: Rect, m: &Model) {
    let mut lines = Vec::new();
    if let Some(s) = &m.status {
        if !s.gateway_interfaces.is_empty() {
            lines.push(Line::from(format!("gateway interfaces: {}", s.gateway_interfaces.join(", "))));
            let clients: Vec<String> =
                m.clients.iter().map(|(a, n, rate)| format!("{a} ({n} streams, {}/s)", bytes(*rate))).collect();
            lines.push(Line::from(if clients.is_empty() {
                "clients: none with an open stream".to_string()
            } else {
                format!("clients: {}", clients.join(", "))
            }));
        }
    }
    for p in &m.peers {
        let key: String = p.peer.public_key.chars().take(10).collect();
        let endpoint = p.peer.endpoint.map_or("-".to_string(), |e| e.to_string());
        let handshake = p.peer.last_handshake_secs.map_or("never".to_string(), |s| format!("{} ago", age(s)));
        let d = &p.peer.drops;
        let drops = d.replay + d.decrypt + d.source;
        let style = if drops > 0 { Style::new().fg(Color::Yellow) } else { Style::new() };
        lines.push(Line::from(vec![
            Span::raw(format!(
                "{key}… {endpoint} handshake {handshake} rx {}/s tx {}/s ",
                bytes(p.rx_per_sec),
                bytes(p.tx_per_sec)
            )),
            Span::styled(format!("drops {} replay {} decrypt {} source", d.replay, d.decrypt, d.source), style),
        ]));
    }
    f.render_widget(Paragraph::new(lines).block(block("Tunnel and gateway", false)), area);
}

fn log(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let inner_height = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = match &m.log_error {
        None => {
            let end = m.log.len().saturating_sub(ui.log_scroll);
            let start = end.saturating_sub(inner_height);
            m.log[start..end]
                .iter()
                .map(|l| {
                    // Written by the daemon: shown as `ttp logs` shows it, never raw; the
                    // date and the fraction of the second left out (room for the words).
                    let l = short_time(&ttp::logfile::printable(l));
                    let style = if l.contains(" ERROR ") {
                        REFUSAL
                    } else if l.contains(" WARN ") {
                        Style::new().fg(Color::Yellow)
                    } else {
                        Style::new().fg(Color::Gray)
                    };
                    Line::from(Span::styled(l, style))
                })
                .collect()
        }
        Some(e) => vec![Line::from(e.clone())],
    };
    f.render_widget(Paragraph::new(lines).block(block("Log", ui.focus == Focus::Log)), area);
}

/// `2026-12-07T06:48:10.383747Z  INFO ...` as `06:48:10 INFO ...`; other lines as they are.
fn short_time(line: &str) -> String {
    let b = line.as_bytes();
    let stamped = b.len() > 20 && b[4] == b'-' && b[10] == b'T' && b[13] == b':';
    match line.split_once(char::is_whitespace) {
        Some((stamp, rest)) if stamped && stamp.ends_with('Z') => format!("{} {}", &line[11..19], rest.trim_start()),
        _ => line.to_string(),
    }
}

fn footer(f: &mut Frame, area: Rect, ui: &Ui) {
    let text = match &ui.flash {
        Some(m) => Line::from(Span::styled(m.clone(), Style::new().fg(Color::Yellow))),
        None => Line::from(vec![
            Span::styled("q", TITLE),
            Span::raw(" quit  "),
            Span::styled("tab", TITLE),
            Span::raw(" pane  "),
            Span::styled("/", TITLE),
            Span::raw(" filter  "),
            Span::styled("o", TITLE),
            Span::raw(" sort  "),
            Span::styled("r", TITLE),
            Span::raw(" new identity  "),
            Span::styled("s", TITLE),
            Span::raw(" stop  "),
            Span::styled("?", TITLE),
            Span::raw(" help"),
        ]),
    };
    f.render_widget(Paragraph::new(text), area);
}

/// A box of `w` by `h` in the middle of `area`.
fn centred(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}

fn help(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("q, Ctrl-C   quit (the daemon runs on)"),
        Line::from("tab         next pane: streams, kill-switch, log"),
        Line::from("up/down     select a stream, or scroll"),
        Line::from("/           filter streams (Enter keeps, Esc clears)"),
        Line::from("o           sort streams: rate, bytes, age, ..."),
        Line::from("r           new identity: new circuits (root)"),
        Line::from("s           stop ttp, after a confirmation (root)"),
        Line::from("?           this help"),
        Line::from(""),
        Line::from("Red counters: the kill-switch stopped something;"),
        Line::from("reversed: it is happening now."),
    ];
    let r = centred(area, 56, text.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(text).block(block("Help", true)), r);
}

fn confirm(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("Stop ttp? The kill-switch is released and"),
        Line::from("this host's traffic goes out directly again."),
        Line::from(""),
        Line::from(vec![Span::styled("y", TITLE), Span::raw(" stop   any other key: cancel")]),
    ];
    let r = centred(area, 50, text.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(text).block(block("Stop", true)), r);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ratatui::{backend::TestBackend, Terminal};
    use ttp::control::proto::StreamSnapshot;

    use super::{
        super::model::{
            tests::{status, stream},
            Daemon, Fetched,
        },
        *,
    };

    fn screen(t: &Terminal<TestBackend>) -> String {
        let b = t.backend().buffer();
        (0..b.area.height)
            .map(|y| (0..b.area.width).map(|x| b[(x, y)].symbol().to_string()).collect::<String>() + "\n")
            .collect()
    }

    #[test]
    fn every_pane_is_readable_at_80x24() {
        let t0 = Instant::now();
        let mut m = Model::default();
        for (i, at) in [t0, t0 + Duration::from_secs(1)].into_iter().enumerate() {
            m.update(Fetched {
                at,
                daemon: Ok(Daemon {
                    status: status(0, 1000 * i as u64, &[("udp_refused", 3 * i as u64), ("tcp_redirected", 5)], (0, 0)),
                    streams: vec![stream(0, "example.org:443", 1000 * i as u64)],
                    cpu_secs: Some(0.5),
                    refusals: vec![super::super::model::Who {
                        counter: "udp_refused".into(),
                        who: "alice (1000) /user.slice/app.scope".into(),
                        count: 3,
                    }],
                }),
                log: Ok(vec!["2026-12-07T06:00:00Z  WARN ttp: something to see".into()]),
                pinned: None,
            });
        }
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let mut ui = Ui { root: false, ..Default::default() };
        t.draw(|f| draw(f, &m, &mut ui)).unwrap();
        let s = screen(&t);
        for want in [
            "Traffic through Tor",
            "DNS",
            "Kill-switch",
            "udp_refused",
            "alice (1000)",
            "Streams",
            "example.org:443",
            "AAAA0001 > BBBB0002 > CCCC0003",
            "Log",
            "something to see",
            "read-only",
            "exit 10.0.0.9",
            "q quit",
        ] {
            assert!(s.contains(want), "{want:?} not on the 80x24 screen:\n{s}");
        }
    }

    #[test]
    fn log_lines_keep_the_time_of_day_only() {
        assert_eq!(short_time("2026-12-07T06:48:10.383747Z  INFO ttp: hi"), "06:48:10 INFO ttp: hi");
        assert_eq!(short_time("not a stamped line"), "not a stamped line");
        assert_eq!(short_time("2026"), "2026");
    }

    #[test]
    fn a_gateway_shows_its_interfaces_peers_and_clients() {
        let mut st = status(0, 0, &[], (0, 0));
        st.gateway_interfaces = vec!["lan0".into(), "ttp0".into()];
        st.tunnel_peers = vec![ttp::control::proto::PeerStatus {
            public_key: "hF1JmvN0yXl8SNAAdCCpLwUDCsRJvjEaMfyNxTObLU8=".into(),
            last_handshake_secs: Some(12),
            ..Default::default()
        }];
        let lan = StreamSnapshot { isolation: "gateway client 192.168.1.20".into(), ..stream(0, "example.org:443", 0) };
        let mut m = Model::default();
        m.update(Fetched {
            at: Instant::now(),
            daemon: Ok(Daemon { status: st, streams: vec![lan], cpu_secs: None, refusals: vec![] }),
            log: Ok(vec![]),
            pinned: None,
        });
        let mut t = Terminal::new(TestBackend::new(100, 30)).unwrap();
        t.draw(|f| draw(f, &m, &mut Ui::default())).unwrap();
        let s = screen(&t);
        for want in ["Tunnel and gateway", "lan0, ttp0", "hF1JmvN0yX", "handshake 12s ago", "192.168.1.20 (1 streams"] {
            assert!(s.contains(want), "{want:?} not shown:\n{s}");
        }
    }

    #[test]
    fn without_a_daemon_the_screen_says_the_host_is_closed_and_why() {
        let mut m = Model::default();
        m.update(Fetched {
            at: Instant::now(),
            daemon: Err("cannot reach the daemon".into()),
            log: Err("no log".into()),
            pinned: Some(super::super::model::Pinned { lockdown: true, fault: Some("Tor task ended".into()) }),
        });
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| draw(f, &m, &mut Ui::default())).unwrap();
        let s = screen(&t);
        assert!(s.contains("lockdown") && s.contains("holds the host closed") && s.contains("Tor task ended"), "{s}");
    }
}
