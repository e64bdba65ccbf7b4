//! A booted Debian 12 with systemd as PID 1 (systemd-nspawn), for what only a real system
//! shows: the Debian package, the systemd unit, systemd-resolved, journald.
//!
//! The root is a cached debootstrap (`cargo xtask test` builds it under target/debian),
//! booted through an overlay so the cache is never written and each boot starts fresh. The
//! container runs in a network namespace and a cgroup the test made (a [`World`]): its
//! cgroup namespace's root is a child of the test's cgroup, so ttp inside, attaching to
//! "its" root cgroup, attaches to that child and never to the host's. Its /sys/fs/bpf is a
//! bpffs instance of its own (nspawn gives a container none), bound in from the host, so
//! the test can watch the pins while the container's ttp makes them.
//!
//! Dropping [`Booted`] kills the container, unmounts the overlay and the bpffs and removes
//! their directories, also when the test failed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{into_cgroup, run, Cgroup, Proc, TempDir, World};

/// Where `cargo xtask test` leaves the booted system's root and the package (the
/// environment names them; these are the defaults it uses).
fn target_path(var: &str, default: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    Ok(crate::target_dir().join(default))
}

/// The cached Debian root (`cargo xtask deb --profile dev --system-root` makes it).
pub fn debian_root() -> Result<PathBuf> {
    let p = target_path("TTP_TEST_DEBIAN_ROOT", "debian/bookworm-root")?;
    if !p.join(".ttp-root-recipe").exists() {
        bail!("no booted-system root at {}: run `cargo xtask deb --profile dev --system-root`", p.display());
    }
    Ok(p)
}

/// The Debian package of this build (`cargo xtask deb --profile dev` makes it).
pub fn debian_package() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TTP_TEST_DEB") {
        return Ok(PathBuf::from(p));
    }
    let dir = target_path("TTP_TEST_DEB_DIR", "debian/dev")?;
    let deb = std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "deb")))
        .with_context(|| format!("no .deb in {}: run `cargo xtask deb --profile dev`", dir.display()))?;
    Ok(deb)
}

/// A booted Debian; see the module's documentation.
pub struct Booted {
    // Drop order: the container, then the mounts, then their directories.
    nspawn: Option<Proc>,
    /// PID (on the host) of the container's systemd.
    pub pid1: u32,
    /// The container's root as the host sees it (the overlay).
    pub root: PathBuf,
    /// The container's /sys/fs/bpf as the host sees it.
    pub bpffs: PathBuf,
    cgroup: Cgroup,
    mounted_nspawn_run: bool,
    _dir: TempDir,
}

impl Booted {
    /// Boots the cached root in `world`'s host network namespace, inside a cgroup made
    /// under `world`'s, and waits until systemd says the system is up.
    pub fn boot(world: &World) -> Result<Self> {
        let lower = debian_root()?;
        let dir = TempDir::new("booted");
        let (upper, work, root, bpffs) =
            (dir.0.join("upper"), dir.0.join("work"), dir.0.join("root"), dir.0.join("bpffs"));
        for d in [&upper, &work, &root, &bpffs] {
            std::fs::create_dir_all(d)?;
        }
        let cgroup = world.cgroups.child("booted")?;
        let mut b = Booted { nspawn: None, pid1: 0, root, bpffs, cgroup, mounted_nspawn_run: false, _dir: dir };
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&b.root))?;
        run(Command::new("mount").args(["-t", "bpf", "bpffs"]).arg(&b.bpffs))?;
        // nspawn keeps its state under /run/systemd/nspawn and needs it on a tmpfs, which a
        // host without systemd does not have (KNOWN.md).
        let nspawn_run = Path::new("/run/systemd/nspawn");
        if !is_mountpoint(nspawn_run) {
            std::fs::create_dir_all(nspawn_run)?;
            run(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(nspawn_run))?;
            b.mounted_nspawn_run = true;
        }
        b.start(world)?;
        Ok(b)
    }

    /// Boots the root (nspawn) and waits until systemd says the system is up.
    fn start(&mut self, world: &World) -> Result<()> {
        let mut c = Command::new("systemd-nspawn");
        // /proc/sys/net writable, as on a real system: a container engine sets forwarding
        // and its bridge's settings, and systemd-sysctl applies Debian's (rp_filter).
        c.env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network");
        c.arg("--directory")
            .arg(&self.root)
            .args(["--boot", "--register=no", "--keep-unit", "--console=pipe", "--resolv-conf=off"])
            .arg(format!("--machine=ttpt-{}", std::process::id()))
            .arg(format!("--network-namespace-path={}", world.host.path()))
            // ttp loads eBPF programs: every capability, and the bpf syscall past nspawn's filter.
            .args(["--capability=all", "--system-call-filter=bpf"])
            .arg(format!("--bind={}:/sys/fs/bpf", self.bpffs.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        into_cgroup(&mut c, &self.cgroup);
        let p = Proc::spawn(c)?;
        let nspawn_pid = p.child.id();
        self.nspawn = Some(p);
        let t0 = Instant::now();
        self.pid1 = loop {
            if let Some(pid) = child_named(nspawn_pid, "systemd") {
                break pid;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("systemd-nspawn started no systemd within 30 s");
            }
            thread::sleep(Duration::from_millis(50));
        };
        // Until its namespaces are set up and its bus is up, systemctl gets no answer.
        let state = loop {
            let out = self.sh("systemctl is-system-running --wait")?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !state.is_empty() && state != "offline" {
                break state;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the booted system did not come up in 60 s: {}", String::from_utf8_lossy(&out.stderr));
            }
            thread::sleep(Duration::from_millis(200));
        };
        eprintln!("booted Debian: {state} after {:.1?}", t0.elapsed());
        if state != "running" {
            let failed = self.sh("systemctl --failed --no-legend")?;
            bail!("the booted system is {state}: {}", String::from_utf8_lossy(&failed.stdout));
        }
        Ok(())
    }

    /// `systemctl poweroff`, then a boot of the same disk. The container's /sys/fs/bpf
    /// starts empty again, as bpffs does after a real reboot.
    pub fn reboot(&mut self, world: &World) -> Result<()> {
        let _ = self.sh("systemctl poweroff");
        let t0 = Instant::now();
        if let Some(p) = self.nspawn.as_mut() {
            while p.child.try_wait()?.is_none() {
                if t0.elapsed() > Duration::from_secs(60) {
                    bail!("the booted system did not power off within 60 s");
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        self.nspawn = None;
        run(Command::new("umount").arg(&self.bpffs))?;
        run(Command::new("mount").args(["-t", "bpf", "bpffs"]).arg(&self.bpffs))?;
        self.start(world)
    }

    /// A command inside the container, as root, outside its units (nsenter: every
    /// namespace of its PID 1; the process stays in the test's cgroup, so nothing inside
    /// governs it). For governed processes use [`Booted::run_as`].
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.pid1.to_string()).args(["-a", "--"]).arg(program);
        c
    }

    /// `sh -c SCRIPT` inside the container; its output whatever its exit status.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.cmd("sh").args(["-c", script]).output().context("nsenter into the booted system")
    }

    /// `sh -c SCRIPT` inside, failing with its output unless it succeeds; its stdout.
    pub fn ok(&self, script: &str) -> Result<String> {
        let out =
            run(self.cmd("sh").args(["-c", script])).with_context(|| format!("in the booted system: {script}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `ARGV` as a user process of the booted system (`systemd-run --uid`: a transient
    /// unit in its system.slice, where any of its programs would run), waiting for it.
    pub fn run_as(&self, uid: u32, argv: &[&str]) -> Result<Output> {
        self.cmd("systemd-run")
            .args(["--quiet", "--wait", "--pipe", "--collect", "--service-type=exec"])
            .arg(format!("--uid={uid}"))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .context("systemd-run in the booted system")
    }

    /// Starts `ARGV` as a user's transient unit named `unit`, not waiting.
    pub fn start_as(&self, uid: u32, unit: &str, argv: &[&str]) -> Result<()> {
        run(self
            .cmd("systemd-run")
            .args(["--quiet", "--collect", "--service-type=exec"])
            .arg(format!("--unit={unit}"))
            .arg(format!("--uid={uid}"))
            .arg("--")
            .args(argv))
        .map(drop)
    }

    /// A file of the container, by its path inside.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // SIGKILL to everything of the container (nspawn included), then the mounts.
        let _ = std::fs::write(self.cgroup.path.join("cgroup.kill"), "1");
        self.nspawn.take();
        for _ in 0..250 {
            let events = std::fs::read_to_string(self.cgroup.path.join("cgroup.events")).unwrap_or_default();
            if !events.contains("populated 1") {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        for m in [&self.root, &self.bpffs] {
            let _ = Command::new("umount").arg("--lazy").arg(m).status();
        }
        if self.mounted_nspawn_run {
            let _ = Command::new("umount").arg("--lazy").arg("/run/systemd/nspawn").status();
        }
        remove_systemd_mirror(&self.cgroup.path);
    }
}

/// On a hybrid host, systemd in the container also makes its cgroups in the v1
/// `name=systemd` hierarchy, at the same path as in the unified one (`booted/payload`,
/// `booted/supervisor`), and nothing removes them when the container goes: its
/// directories go here, deepest first, up to the test's own (each is empty by now).
fn remove_systemd_mirror(unified: &Path) {
    let Ok(root) = ttp::cgroup::cgroup2_root() else { return };
    let Ok(rel) = unified.strip_prefix(&root) else { return };
    let v1 = Path::new("/sys/fs/cgroup/systemd");
    let Some(top) = rel.components().next() else { return };
    let top = v1.join(top);
    if !top.is_dir() || top == v1 {
        return;
    }
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    rmdir_tree(&top);
}

fn is_mountpoint(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&*p.to_string_lossy()))
}

/// A direct child of `parent` whose command name is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
}
