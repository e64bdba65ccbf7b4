//! `ttp top`: a live dashboard of the daemon, in the terminal (it works over SSH on a
//! headless gateway).
//!
//! A thread polls the daemon's control socket once a second (status and streams) and
//! reads the log's tail; the screen takes the newest poll. The daemon does nothing for
//! `ttp top` but answer those requests: a slow terminal slows only this process, and a
//! `ttp top` that is stopped (Ctrl-Z) or gone sends nothing, its connection is closed by
//! the daemon after 30 s idle, and a reply it never reads costs the daemon one control
//! slot for at most 30 s (the socket's limits, in `control`).
//!
//! As root, `r` asks for a new identity and `s` stops ttp (after a confirmation); as a
//! member of the `ttp` group it is read-only, as the control socket is.

mod model;
mod view;

use std::{
    collections::HashMap,
    io::{Read, Seek, SeekFrom},
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ttp::{
    control::client::Client,
    datapath::{Maps, PinLayout},
};

use self::{
    model::{Daemon, Fetched, Model, Pinned, Who, LOG_LINES},
    view::{Focus, Ui},
};
use super::{log_path, Paths};

/// A live dashboard: Tor, traffic, streams, DNS, the kill-switch, peers, the log.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: Paths,
    /// Seconds between polls of the daemon.
    #[arg(long, default_value_t = 1.0, value_parser = interval)]
    pub interval: f64,
}

fn interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.2..=60.0).contains(&v) => Ok(v),
        _ => Err("between 0.2 and 60 seconds".into()),
    }
}

/// How long one poll may wait for the daemon: a stalled daemon shows as such, it does
/// not freeze the screen (the poll runs in its own thread anyway).
const POLL_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of the log's end is read for the log pane.
const LOG_TAIL_BYTES: u64 = 32 * 1024;
/// How long a message stays in the footer.
const FLASH: Duration = Duration::from_secs(6);

impl Args {
    /// Read-only for the `ttp` group; `r` and `s` need root.
    pub const NEEDS_ROOT: bool = false;

    pub fn run(self) -> Result<()> {
        run(self)
    }
}

fn run(args: Args) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        bail!("ttp top needs a terminal; for scripts: `ttp status --json`, `ttp streams --json`");
    }
    let Paths { runtime_dir, pin_dir } = args.paths;
    let (tx, rx) = mpsc::sync_channel(1);
    {
        let (runtime_dir, pin_dir) = (runtime_dir.clone(), pin_dir.clone());
        let every = Duration::from_secs_f64(args.interval);
        std::thread::spawn(move || poll(&runtime_dir, &pin_dir, every, tx));
    }
    // Raw mode and the alternate screen, restored on return and on a panic.
    let mut terminal = ratatui::init();
    let outcome = screen(&mut terminal, rx, &runtime_dir);
    ratatui::restore();
    match outcome? {
        Outcome::Quit => Ok(()),
        // Out of the dashboard first: the stop says what it does, as `ttp stop` does.
        Outcome::Stop => {
            super::watchdog::stop(&runtime_dir);
            super::stop::stop(&runtime_dir, &pin_dir)
        }
    }
}

enum Outcome {
    Quit,
    Stop,
}

/// The polling thread: one [`Fetched`] per interval, dropped when the screen has not
/// taken the previous one yet; ends when the screen is gone.
fn poll(runtime_dir: &Path, pin_dir: &Path, every: Duration, tx: mpsc::SyncSender<Fetched>) {
    let mut client = Client::new(runtime_dir).with_timeout(POLL_TIMEOUT);
    let log = log_path(runtime_dir);
    let mut names = Names::default();
    loop {
        let f = fetch(&mut client, runtime_dir, pin_dir, &log, &mut names);
        if let Err(mpsc::TrySendError::Disconnected(_)) = tx.try_send(f) {
            return;
        }
        std::thread::sleep(every);
    }
}

fn fetch(client: &mut Client, runtime_dir: &Path, pin_dir: &Path, log: &Path, names: &mut Names) -> Fetched {
    let at = Instant::now();
    let daemon = (|| -> Result<Daemon> {
        let status = client.status()?;
        let streams = client.streams(false)?;
        let cpu_secs = cpu_secs(status.pid);
        let refusals = status
            .refusals
            .iter()
            .map(|r| Who { counter: r.counter.clone(), who: names.who(r.uid, r.cgroup), count: r.count })
            .collect();
        Ok(Daemon { status, streams, cpu_secs, refusals })
    })()
    .map_err(|e| format!("{e:#}"));
    let pinned = daemon.is_err().then(|| pinned(runtime_dir, pin_dir)).flatten();
    Fetched { at, daemon, log: log_tail(log), pinned }
}

/// Names for uids and cgroup ids, looked up once each (a cgroup by a walk of the
/// hierarchy: once per cgroup, not per poll).
#[derive(Default)]
struct Names {
    users: HashMap<u32, Option<String>>,
    cgroups: HashMap<u64, Option<String>>,
}

impl Names {
    /// `alice (1000) /user.slice/app.scope`; numbers for what has no name. A cgroup id of
    /// 0 (a packet without a socket) is left out.
    fn who(&mut self, uid: u32, cgroup: u64) -> String {
        let user = self
            .users
            .entry(uid)
            .or_insert_with(|| nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name))
            .clone();
        let mut s = match user {
            Some(name) => format!("{name} ({uid})"),
            None => format!("uid {uid}"),
        };
        if cgroup != 0 {
            let path = self
                .cgroups
                .entry(cgroup)
                .or_insert_with(|| ttp::cgroup::path_of_id(cgroup, 20_000).map(|p| p.display().to_string()))
                .clone();
            s.push(' ');
            s.push_str(&path.unwrap_or_else(|| format!("cgroup {cgroup}")));
        }
        s
    }
}

/// The daemon's CPU time so far (user and system), from /proc.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = procfs::process::Process::new(pid as i32).ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Without a daemon: whether the kill-switch is still in place, and the monitor's record
/// of why the daemon ended (root reads them; others see only that pins are there).
fn pinned(runtime_dir: &Path, pin_dir: &Path) -> Option<Pinned> {
    let layout = PinLayout::new(pin_dir);
    if !layout.exists() {
        return None;
    }
    let lockdown =
        Maps::read_pinned_state(&layout.maps()).map(|(cfg, _)| cfg.has(ttp_common::flags::LOCKDOWN)).unwrap_or(false);
    Some(Pinned { lockdown, fault: ttp::monitor::last_fault(runtime_dir) })
}

/// The last lines of the log, from its last few KB only (read every poll).
fn log_tail(path: &Path) -> Result<Vec<String>, String> {
    let read = || -> std::io::Result<Vec<String>> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let from = len.saturating_sub(LOG_TAIL_BYTES);
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.take(LOG_TAIL_BYTES).read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if from > 0 && !lines.is_empty() {
            lines.remove(0); // cut at a line's middle
        }
        let skip = lines.len().saturating_sub(LOG_LINES);
        Ok(lines.split_off(skip))
    };
    read().map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            format!("the log ({}) is root's to read: `sudo ttp top` shows it", path.display())
        }
        std::io::ErrorKind::NotFound => format!("no log at {} yet", path.display()),
        _ => format!("reading {}: {e}", path.display()),
    })
}

fn screen(terminal: &mut ratatui::DefaultTerminal, rx: mpsc::Receiver<Fetched>, runtime_dir: &Path) -> Result<Outcome> {
    let mut model = Model::default();
    let mut ui = Ui { root: nix::unistd::geteuid().is_root(), ..Default::default() };
    // What `r` did, from its own thread (a slow daemon must not freeze the screen).
    let (said_tx, said) = mpsc::channel::<String>();
    let mut flashed = Instant::now();
    loop {
        while let Ok(f) = rx.try_recv() {
            model.update(f);
        }
        if let Ok(msg) = said.try_recv() {
            ui.flash = Some(msg);
            flashed = Instant::now();
        }
        if ui.flash.is_some() && flashed.elapsed() > FLASH {
            ui.flash = None;
        }
        terminal.draw(|f| view::draw(f, &model, &mut ui))?;
        if !event::poll(Duration::from_millis(200))? {
            continue;
        }
        let Event::Key(key) = event::read()? else { continue };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let before = ui.flash.clone();
        match on_key(key, &model, &mut ui) {
            Some(Action::Quit) => return Ok(Outcome::Quit),
            Some(Action::Stop) => return Ok(Outcome::Stop),
            Some(Action::Refresh) => {
                let (dir, said) = (runtime_dir.to_owned(), said_tx.clone());
                std::thread::spawn(move || {
                    let _ = said.send(match Client::new(&dir).with_timeout(POLL_TIMEOUT).refresh() {
                        Ok(n) => format!("new identity: new streams use new circuits ({n} isolation keys renewed)"),
                        Err(e) => format!("new identity failed: {e:#}"),
                    });
                });
            }
            None => {}
        }
        if ui.flash != before {
            flashed = Instant::now();
        }
    }
}

/// What a key asks of the loop, beyond changing the screen.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Quit,
    Stop,
    Refresh,
}

const ROOT_ONLY: &str = "needs root: ttp top is read-only for the ttp group (`sudo ttp top`)";

fn on_key(key: KeyEvent, model: &Model, ui: &mut Ui) -> Option<Action> {
    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
    if ctrl_c {
        return Some(Action::Quit);
    }
    if ui.confirm_stop {
        ui.confirm_stop = false;
        if key.code == KeyCode::Char('y') {
            return Some(Action::Stop);
        }
        ui.flash = Some("stop cancelled".into());
        return None;
    }
    if ui.help {
        ui.help = false;
        return (key.code == KeyCode::Char('q')).then_some(Action::Quit);
    }
    if ui.editing_filter {
        match key.code {
            KeyCode::Char(c) if ui.filter.len() < 64 => ui.filter.push(c),
            KeyCode::Backspace => {
                ui.filter.pop();
            }
            KeyCode::Enter => ui.editing_filter = false,
            KeyCode::Esc => {
                ui.filter.clear();
                ui.editing_filter = false;
            }
            _ => {}
        }
        return None;
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => return Some(Action::Quit),
        KeyCode::Tab => ui.focus = ui.focus.next(),
        KeyCode::Char('/') => {
            ui.focus = Focus::Streams;
            ui.editing_filter = true;
        }
        KeyCode::Char('o') => ui.sort = ui.sort.next(),
        KeyCode::Char('?') => ui.help = true,
        KeyCode::Char('r') if !ui.root => ui.flash = Some(format!("r (new identity) {ROOT_ONLY}")),
        KeyCode::Char('r') => {
            ui.flash = Some("asking for a new identity...".into());
            return Some(Action::Refresh);
        }
        KeyCode::Char('s') if !ui.root => ui.flash = Some(format!("s (stop) {ROOT_ONLY}")),
        KeyCode::Char('s') => ui.confirm_stop = true,
        KeyCode::Up | KeyCode::Char('k') => scroll(model, ui, -1),
        KeyCode::Down | KeyCode::Char('j') => scroll(model, ui, 1),
        KeyCode::PageUp => scroll(model, ui, -10),
        KeyCode::PageDown => scroll(model, ui, 10),
        _ => {}
    }
    None
}

/// Moves the focused pane's selection or view by `by` rows (negative: up).
fn scroll(model: &Model, ui: &mut Ui, by: isize) {
    match ui.focus {
        Focus::Streams => {
            let rows = model.visible(ui.sort, &ui.filter);
            if rows.is_empty() {
                return;
            }
            let at = rows.iter().position(|r| Some(r.snap.id) == ui.selected).unwrap_or(0);
            let to = at.saturating_add_signed(by).min(rows.len() - 1);
            ui.selected = Some(rows[to].snap.id);
        }
        // Up shows older lines.
        Focus::Log => {
            let n = model.log.len();
            ui.log_scroll = ui.log_scroll.saturating_add_signed(-by).min(n.saturating_sub(1));
        }
        Focus::KillSwitch => ui.counter_scroll = ui.counter_scroll.saturating_add_signed(by).min(model.counters.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn a_group_member_cannot_stop_or_refresh_and_is_told_why() {
        let m = Model::default();
        let mut ui = Ui { root: false, ..Default::default() };
        assert_eq!(on_key(key(KeyCode::Char('s')), &m, &mut ui), None);
        assert!(!ui.confirm_stop && ui.flash.as_deref().unwrap().contains("needs root"));
        assert_eq!(on_key(key(KeyCode::Char('r')), &m, &mut ui), None);
    }

    #[test]
    fn root_stops_only_after_saying_yes() {
        let m = Model::default();
        let mut ui = Ui { root: true, ..Default::default() };
        assert_eq!(on_key(key(KeyCode::Char('s')), &m, &mut ui), None);
        assert!(ui.confirm_stop);
        assert_eq!(on_key(key(KeyCode::Char('n')), &m, &mut ui), None, "any other key cancels");
        assert!(!ui.confirm_stop);
        on_key(key(KeyCode::Char('s')), &m, &mut ui);
        assert_eq!(on_key(key(KeyCode::Char('y')), &m, &mut ui), Some(Action::Stop));
        assert_eq!(on_key(key(KeyCode::Char('r')), &m, &mut ui), Some(Action::Refresh));
    }

    #[test]
    fn typing_a_filter_does_not_trigger_keys() {
        let m = Model::default();
        let mut ui = Ui { root: true, ..Default::default() };
        on_key(key(KeyCode::Char('/')), &m, &mut ui);
        for c in "qsr".chars() {
            assert_eq!(on_key(key(KeyCode::Char(c)), &m, &mut ui), None);
        }
        assert_eq!(ui.filter, "qsr");
        on_key(key(KeyCode::Esc), &m, &mut ui);
        assert!(ui.filter.is_empty() && !ui.editing_filter);
    }
}
