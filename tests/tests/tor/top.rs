//! `ttp top` in a real terminal (tmux) against a daemon on the private network: what it
//! shows follows what the daemon does, its keys act (as root) or are refused (as a member
//! of the `ttp` group), and every pane stays readable at 80x24.

use std::{path::PathBuf, process::Command};

use super::*;

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux {
    socket: PathBuf,
    _dir: ttp_tests::TempDir,
}

impl Tmux {
    fn start() -> Tmux {
        let dir = ttp_tests::TempDir::new("tmux");
        Tmux { socket: dir.0.join("tmux.sock"), _dir: dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).env("TERM", "xterm-256color");
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("running tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A session `name` of `w`x`h` running `command` (one shell word each).
    fn session(&self, name: &str, w: u16, h: u16, command: &[String]) {
        let mut c = self.cmd();
        c.args(["new-session", "-d", "-s", name, "-x", &w.to_string(), "-y", &h.to_string()]);
        // Keep the pane when the program ends, so a crash is there to read.
        c.arg(format!(
            "{}; echo TOP-ENDED $?; sleep 600",
            command.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
        ));
        let out = c.output().unwrap();
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The pane's text (with `escapes`, its colours as SGR sequences).
    fn screen(&self, name: &str, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", name];
        if escapes {
            args.push("-e");
        }
        self.run(&args)
    }

    fn keys(&self, name: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", name];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits until `name`'s screen satisfies `ok`, and returns that screen.
    fn wait(&self, name: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen(name, false);
            if ok(&s) {
                return s;
            }
            assert!(!s.contains("TOP-ENDED"), "ttp top ended while waiting for {what}:\n{s}");
            assert!(t0.elapsed() < Duration::from_secs(60), "ttp top never showed {what}; the screen:\n{s}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The stream table's rows to the web server: their circuit column (`3.1 AAAA>BBBB>CCCC`:
/// Arti's circuit id, then its relays).
fn web_circuits(screen: &str) -> Vec<String> {
    screen
        .lines()
        // Rows, not the selected stream's line in the table's bottom border.
        .filter(|l| l.contains(&format!("{WEB}:80")) && !l.starts_with('└'))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let relays = words.iter().position(|w| w.contains('>'))?;
            Some(format!("{} {}", words.get(relays.checked_sub(1)?)?, words[relays]))
        })
        .collect()
}

#[test]
fn ttp_top_shows_streams_refusals_and_circuits_live_and_only_root_acts() {
    let gid = ttp_group();
    let w = World::with_testnet(net()).unwrap();
    // The log where `ttp top` reads it: in the runtime directory.
    let (daemon, _state, rt) = run_at(&w, "top", true);
    // The network's exits may refuse streams while they settle (see `start`).
    let t0 = Instant::now();
    while curl(&w, &format!("http://{WEB}/index.txt")) != PAGE {
        assert!(t0.elapsed() < Duration::from_secs(60), "no stream through Tor within 60 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let top = |extra: &[&str]| -> Vec<String> {
        let mut argv: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        argv.push(ttp_tests::bin("ttp").display().to_string());
        argv.extend(["top", "--runtime-dir"].map(String::from));
        argv.push(rt.0.display().to_string());
        argv.push("--pin-dir".into());
        argv.push(w.pin_dir.display().to_string());
        argv
    };
    let tmux = Tmux::start();
    tmux.session("root", 120, 40, &top(&[]));
    tmux.wait("root", "the running daemon", |s| s.contains("running") && s.contains("Tor 100%"));

    // A governed download: the traffic line and the stream table show it while it runs.
    let url = format!("http://{WEB}/50M.bin");
    let slow = ["curl", "-s", "-o", "/dev/null", "--max-time", "8", "--limit-rate", "200k", url.as_str()];
    let download = w.spawn_in(&w.governed, GOVERNED, GOVERNED, &slow).unwrap();
    // Through Tor the bytes come in bursts (curl's --limit-rate paces its reads, not the
    // socket's buffer): some second of the download shows a rate above zero.
    let s = tmux.wait("root", "the download's stream and its traffic", |s| {
        !web_circuits(s).is_empty() && s.lines().any(|l| l.contains("│down ") && !l.contains("│down 0 B/s"))
    });
    let before = web_circuits(&s);
    drop(download);
    tmux.wait("root", "the download's end", |s| web_circuits(s).is_empty());

    // A refused probe (QUIC-like UDP, refused at the socket) shows in the kill-switch pane.
    assert!(!tmux.screen("root", false).contains("udp_refused"), "udp_refused before any UDP was sent");
    let probe = "import socket\ntry:\n  socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('203.0.113.10', 443))\nexcept OSError as e:\n  print(e)";
    w.run_in(&w.governed, GOVERNED, GOVERNED, &["/usr/bin/python3", "-c", probe]);
    // ...under it, who tried: the governed uid (no name on this host) and its cgroup.
    tmux.wait("root", "the refused UDP and who tried it", |s| s.contains("udp_refused") && s.contains("by uid 1001 /"));
    // Refusals are drawn in red (tmux writes it as colour 1 of 256, or as SGR 31).
    let coloured = tmux.screen("root", true);
    let line = coloured.lines().find(|l| l.contains("udp_refused")).unwrap();
    assert!(["38;5;1m", "38;5;9m", "[31m", ";31m", "[91m"].iter().any(|red| line.contains(red)), "not red: {line:?}");

    // `r` as root: a new identity, and the next stream is on another circuit.
    tmux.keys("root", &["r"]);
    tmux.wait("root", "the new identity", |s| s.contains("new identity: new streams use new circuits"));
    let download = w.spawn_in(&w.governed, GOVERNED, GOVERNED, &slow).unwrap();
    let s = tmux.wait("root", "the new stream", |s| !web_circuits(s).is_empty());
    let after = web_circuits(&s);
    // For the README: streams, traffic and a refusal on one screen.
    std::thread::sleep(Duration::from_secs(3));
    let wide = tmux.screen("root", true);
    drop(download);
    // Arti's circuit ids: relays may repeat on a network this small, circuits may not.
    let id =
        |c: &Vec<String>| c.iter().map(|c| c.split(' ').next().unwrap_or_default().to_string()).collect::<Vec<_>>();
    assert_ne!(id(&after), id(&before), "the stream after `r` is on the same circuit: {before:?} then {after:?}");

    // A member of the ttp group reads, and `s` is refused: the daemon runs on.
    let g = gid.to_string();
    let member = ["setpriv", "--reuid=1001", "--regid=1001"].map(String::from).to_vec();
    let mut member = member;
    member.push(format!("--groups={g}"));
    member.push("--".into());
    tmux.session("member", 120, 40, &top(&member.iter().map(String::as_str).collect::<Vec<_>>()));
    tmux.wait("member", "the daemon, read-only", |s| s.contains("running") && s.contains("read-only (ttp group)"));
    tmux.keys("member", &["s"]);
    tmux.wait("member", "the refusal of s", |s| s.contains("s (stop) needs root"));
    tmux.keys("member", &["y"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(tmux.screen("member", false).contains("running"), "a group member's s stopped something");

    // 80x24: every pane is there and says something.
    tmux.run(&["resize-window", "-t", "root", "-x", "80", "-y", "24"]);
    std::thread::sleep(Duration::from_millis(1500));
    let small = tmux.wait("root", "every pane at 80x24", |s| {
        s.lines().count() <= 24
            && ["Traffic through Tor", "DNS", "Kill-switch", "Streams", "Log", "q quit", "udp_refused", "q/s"]
                .iter()
                .all(|p| s.contains(p))
    });
    assert!(small.lines().all(|l| l.chars().count() <= 80), "wider than 80 columns:\n{small}");
    // The captures, for the README's screenshots (tests/tools/ansi_to_png.py).
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("top-screens");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("80x24.ansi"), tmux.screen("root", true)).unwrap();
    std::fs::write(shots.join("120x40.ansi"), wide).unwrap();

    // `s` as root asks first; `y` stops ttp, and the dashboard hands over to `ttp stop`.
    tmux.keys("root", &["s"]);
    tmux.wait("root", "the stop confirmation", |s| s.contains("Stop ttp?"));
    tmux.keys("root", &["y"]);
    tmux.wait("root", "the stop", |s| s.contains("TOP-ENDED 0"));
    assert!(!w.pin_dir.exists(), "the pins outlived the stop");
    drop(daemon);
}
