//! The `ttp` command's behaviour on bad input and with nothing running, and install /
//! uninstall under a throwaway prefix. Anything that could touch the host runs in a test
//! world (its own namespaces, cgroups and pin directory) and never gets far.

use std::process::{Command, Output};

use ttp_tests::{bin, World};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// One line on stderr, starting with `ttp: `, exit code 1.
fn one_line_error(out: &Output, want: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout: {} stderr: {err}", text(&out.stdout));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    assert!(lines[0].starts_with("ttp: ") && lines[0].contains(want), "{err}");
}

#[test]
fn bad_input_is_one_clear_line_and_changes_nothing() {
    let w = World::new().expect("test world");
    let tmp = ttp_tests::TempDir::new("cli");
    let state = tmp.0.clone();
    let start = |extra: &[&str]| -> Output {
        let mut c = w.ttp_cmd("start", &state);
        c.args(extra);
        c.output().unwrap()
    };
    one_line_error(&start(&["--no-such-option"]), "--no-such-option");
    one_line_error(&start(&["--trans-port", "70000"]), "70000");
    one_line_error(&start(&["--config", "/nonexistent/ttp.toml"]), "reading the config file");
    std::fs::create_dir_all(&state).unwrap();
    let conf = state.join("bad.toml");
    std::fs::write(&conf, "no-such-key = 1\n").unwrap();
    one_line_error(&start(&["--config", conf.to_str().unwrap()]), "unknown key `no-such-key`");
    std::fs::write(&conf, "trans-port = [\n").unwrap();
    one_line_error(&start(&["--config", conf.to_str().unwrap()]), "not valid TOML");
    // These reach the daemon, which refuses them before anything changes.
    let out = start(&["--use-bridges", "--bridge", "not a bridge line"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("bridge 1 does not parse"), "{}", text(&out.stderr));
    // A snowflake bridge whose transport program is missing: one line naming it.
    let fp = "0123456789ABCDEF0123456789ABCDEF01234567";
    let snowflake = format!("snowflake 192.0.2.3:80 {fp} fingerprint={fp} url=https://broker.example.net/");
    let out = start(&["--use-bridges", "--bridge", &snowflake, "--pt-path", "snowflake=/nonexistent/snowflake-client"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--pt-path snowflake=/nonexistent/snowflake-client: no such program"),
        "{}",
        text(&out.stderr)
    );
    one_line_error(&start(&["--pt-path", "snowflake"]), "is not TRANSPORT=PATH");
    // One bridge on two lines (it moved): Tor would dial one of them only.
    let out = start(&[
        "--use-bridges",
        "--bridge",
        &format!("192.0.2.1:443 {fp}"),
        "--bridge",
        &format!("192.0.2.2:443 {fp}"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("bridges 1 and 2 have the same fingerprint"), "{}", text(&out.stderr));
    let mut c = w.host.cmd(bin("ttp"));
    c.args(["start", "--cgroup", "/nonexistent-cgroup", "--uplink", ttp_tests::UPLINK])
        .arg("--daemon-cgroup")
        .arg(&w.daemon.path)
        .arg("--pin-dir")
        .arg(&w.pin_dir)
        .arg("--state-dir")
        .arg(&state)
        .arg("--runtime-dir")
        .arg(state.join("run"));
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent-cgroup"), "{}", text(&out.stderr));
    assert!(!w.pin_dir.exists(), "something was pinned");

    // Nothing running: stop is a no-op that says so; status says how to start.
    let stop = w.ttp_ctl(&["stop"], &state).output().unwrap();
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert!(text(&stop.stdout).contains("was not running"), "{}", text(&stop.stdout));
    // Status in every state: stopped is exit code 3 (as `systemctl status` gives), and
    // --json is JSON then too.
    let status = w.ttp_ctl(&["status"], &state).output().unwrap();
    assert_eq!(status.status.code(), Some(3), "{}", text(&status.stderr));
    assert!(text(&status.stdout).starts_with("state:    stopped"), "{}", text(&status.stdout));
    let status = w.ttp_ctl(&["status", "--json"], &state).output().unwrap();
    assert_eq!(status.status.code(), Some(3), "{}", text(&status.stderr));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json prints JSON when stopped");
    assert_eq!(v["state"], "stopped", "{v}");
    one_line_error(&w.ttp_ctl(&["restart"], &state).output().unwrap(), "nothing to restart");
    one_line_error(&w.ttp_ctl(&["exec", "--tor", "--", "true"], &state).output().unwrap(), "not running");

    // Without root: exit code 2.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin("ttp"))
        .args(["stop", "--runtime-dir"])
        .arg(state.join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("needs root"), "{}", text(&out.stderr));
}

#[test]
fn install_then_uninstall_under_a_prefix_leaves_nothing() {
    let prefix = std::env::temp_dir().join(format!("ttpt-prefix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    std::fs::create_dir_all(&prefix).unwrap();
    let ttp = |args: &[&str]| -> String {
        let out = Command::new(bin("ttp")).args(args).arg("--prefix").arg(&prefix).output().unwrap();
        assert!(out.status.success(), "ttp {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    ttp(&["install"]);
    for f in [
        "usr/local/bin/ttp",
        "etc/systemd/system/ttp.service",
        "usr/share/bash-completion/completions/ttp",
        "usr/local/share/man/man1/ttp.1",
        "etc/ttp/ttp.toml",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }
    let unit = std::fs::read_to_string(prefix.join("etc/systemd/system/ttp.service")).unwrap();
    assert!(unit.contains("Type=notify"));
    // Tor's state, as a running ttp leaves it.
    std::fs::create_dir_all(prefix.join("var/lib/ttp/arti")).unwrap();
    let out = ttp(&["uninstall"]);
    assert!(out.contains("removed"), "{out}");
    let left: Vec<_> = walk(&prefix).into_iter().filter(|p| p.is_file()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!prefix.join("var/lib/ttp").exists() && !prefix.join("etc/ttp").exists());
    assert!(ttp(&["uninstall"]).contains("nothing of ttp was installed"));
    std::fs::remove_dir_all(&prefix).unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Without `--user`, the daemon becomes the system user `ttp`, created if it is missing.
/// Run in a private mount namespace over a copy of /etc, so the host's user database is
/// never touched; the start stops right after (a state directory the user cannot reach).
#[test]
fn the_default_service_user_is_created_when_missing() {
    let w = World::new().expect("test world");
    let tmp = ttp_tests::TempDir::new("etc");
    let closed = tmp.0.join("closed");
    std::fs::create_dir_all(&closed).unwrap();
    std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let host_passwd = std::fs::read(std::fs::canonicalize("/etc/passwd").unwrap()).unwrap();
    // `$0`: the scratch dir; `$@`: the daemon's command line.
    let script = r#"set -e
        mount --make-rprivate /
        cp -a /etc "$0/etc"
        mount --bind "$0/etc" /etc
        if getent passwd ttp >/dev/null; then userdel ttp; fi
        if "$@"; then echo "the daemon started?"; exit 1; fi
        getent passwd ttp"#;
    let mut c = w.daemon_cmd("ttp", &["run"]);
    let daemon: Vec<std::ffi::OsString> = std::iter::once(c.get_program().to_owned())
        .chain(c.get_args().map(|a| a.to_owned()))
        .chain(["--state-dir".into(), closed.join("state").into(), "--runtime-dir".into(), closed.join("run").into()])
        .collect();
    c = Command::new("unshare");
    c.args(["--mount", "--", "bash", "-c", script]).arg(&tmp.0).args(&daemon);
    let out = c.output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("ttp:x:") && stdout.contains("/usr/sbin/nologin"), "{stdout}");
    assert!(stderr.contains("created the system user ttp"), "{stderr}");
    assert!(stderr.contains("is not searchable by the service user"), "{stderr}");
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), host_passwd, "the host's /etc/passwd changed");
    assert!(!w.pin_dir.exists(), "something was pinned");
}

#[test]
fn ttp_logs_never_passes_escape_sequences_to_the_terminal() {
    // The log is written by the daemon, as the service user: a compromised one could put
    // terminal escapes in it for root's `ttp logs`.
    let tmp = ttp_tests::TempDir::new("logs");
    std::fs::create_dir_all(&tmp.0).unwrap();
    std::fs::write(tmp.0.join("ttp.log"), "INFO ok\nINFO \u{1b}]0;pwned\u{7}\u{1b}[1A\u{1b}[2Kgone\n").unwrap();
    let out = Command::new(bin("ttp")).args(["logs", "--no-follow", "--runtime-dir"]).arg(&tmp.0).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07), "{:?}", text(&out.stdout));
    assert!(text(&out.stdout).contains("INFO \\x1b]0;pwned\\x07\\x1b[1A\\x1b[2Kgone"), "{}", text(&out.stdout));
}
