//! `ttp install` and `ttp uninstall`: what ttp puts on a host, and taking it away again.
//!
//! Everything an install writes is listed in a [`Layout`]; uninstall removes exactly that,
//! plus the state ttp made while running (Tor's state and cache), so the two can never
//! drift apart. `--prefix` puts the tree under another root (packaging, tests); the
//! system-wide steps (the `ttp` group, systemd, stopping a running ttp) only happen for `/`.
//! `--layout debian` stages the Debian package's tree (`cargo xtask deb`): there dpkg and
//! the package's maintainer scripts do the system-wide steps.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Where each of ttp's files goes, relative to the prefix.
pub struct Layout {
    pub bin: &'static str,
    pub unit: &'static str,
    /// The kill-switch at boot, before the network (`ttp lock`).
    pub lock_unit: &'static str,
    pub bash: &'static str,
    pub zsh: &'static str,
    pub fish: &'static str,
    pub man: &'static str,
}

/// A source install (`ttp install`): the admin's own corner of the tree.
const LOCAL: Layout = Layout {
    bin: "usr/local/bin/ttp",
    unit: "etc/systemd/system/ttp.service",
    lock_unit: "etc/systemd/system/ttp-lock.service",
    bash: "usr/share/bash-completion/completions/ttp",
    zsh: "usr/share/zsh/vendor-completions/_ttp",
    fish: "usr/share/fish/vendor_completions.d/ttp.fish",
    man: "usr/local/share/man/man1/ttp.1",
};

/// A Debian package's tree (`cargo xtask deb` stages it with `--layout debian`): the
/// distribution's directories, the unit where bookworm's systemd looks for packaged units.
/// The packager compresses the man page.
const DEBIAN: Layout = Layout {
    bin: "usr/bin/ttp",
    unit: "lib/systemd/system/ttp.service",
    lock_unit: "lib/systemd/system/ttp-lock.service",
    man: "usr/share/man/man1/ttp.1",
    ..LOCAL
};

impl Layout {
    fn files(&self) -> [&'static str; 7] {
        [self.bin, self.unit, self.lock_unit, self.bash, self.zsh, self.fish, self.man]
    }
}

/// Which tree `ttp install --prefix DIR` writes.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LayoutKind {
    /// /usr/local/bin, /etc/systemd/system: a source install.
    #[default]
    Local,
    /// /usr/bin, /lib/systemd/system: staging a distribution package.
    Debian,
}

impl LayoutKind {
    pub fn layout(self) -> &'static Layout {
        match self {
            LayoutKind::Local => &LOCAL,
            LayoutKind::Debian => &DEBIAN,
        }
    }
}

/// Directories ttp owns: the config and the persistent Tor state.
const CONFIG_DIR: &str = "etc/ttp";
const STATE_DIR: &str = "var/lib/ttp";

const UNIT: &str = include_str!("../../../dist/ttp.service");
const LOCK_UNIT: &str = include_str!("../../../dist/ttp-lock.service");
const EXAMPLE_CONFIG: &str =
    "# ttp's configuration: every option of `ttp start` is a key; the command line overrides.\n\
# See `ttp start --help`. Examples:\n\
# uplink = [\"eth0\"]\n\
# bypass-uid = [1000]\n\
# no-lan-bypass = true\n\
# use-bridges = true\n\
# bridge = [\"obfs4 192.0.2.1:443 FINGERPRINT cert=... iat-mode=0\"]\n\
# bridges-file = \"/etc/ttp/bridges.txt\"  # lines of obfs4, meek_lite, snowflake or webtunnel bridges\n\
# pt-path = [\"snowflake=/usr/bin/snowflake-client\"]\n\
# gateway = [\"docker0\", \"br-*\"]  # containers on these bridges go through Tor (taken over when they appear)\n\
# watchdog = true\n";

fn under(prefix: &Path, rel: &str) -> PathBuf {
    prefix.join(rel)
}

/// A unit, its commands pointing at where this layout puts the binary.
fn unit(text: &str, layout: &Layout) -> String {
    text.replace("/usr/local/bin/ttp", &format!("/{}", layout.bin))
}

pub fn install(prefix: &Path, kind: LayoutKind) -> Result<()> {
    let layout = kind.layout();
    if matches!(kind, LayoutKind::Debian) && prefix == Path::new("/") {
        anyhow::bail!(
            "--layout debian stages a package's tree: give it --prefix DIR (install the package with apt instead)"
        );
    }
    let write = |rel: &str, data: &[u8], mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = under(prefix, rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Replace, never write into: the running binary may be this very file.
        let tmp = p.with_extension("ttp-new");
        std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("installing {}", p.display()))?;
        println!("installed {}", p.display());
        Ok(())
    };
    let exe = std::fs::read(std::env::current_exe()?).context("reading the ttp binary")?;
    write(layout.bin, &exe, 0o755)?;
    write(layout.unit, unit(UNIT, layout).as_bytes(), 0o644)?;
    write(layout.lock_unit, unit(LOCK_UNIT, layout).as_bytes(), 0o644)?;
    for (rel, shell) in [
        (layout.bash, clap_complete::Shell::Bash),
        (layout.zsh, clap_complete::Shell::Zsh),
        (layout.fish, clap_complete::Shell::Fish),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut crate::Cli::command(), "ttp", &mut out);
        write(rel, &out, 0o644)?;
    }
    let mut man = Vec::new();
    clap_mangen::Man::new(crate::Cli::command()).render(&mut man)?;
    write(layout.man, &man, 0o644)?;
    let config = under(prefix, CONFIG_DIR).join("ttp.toml");
    if !config.exists() {
        write(&format!("{CONFIG_DIR}/ttp.toml"), EXAMPLE_CONFIG.as_bytes(), 0o644)?;
    }
    if prefix == Path::new("/") {
        if nix::unistd::User::from_name(ttp::user::DEFAULT)?.is_none() {
            ttp::user::create_system_user()?;
            println!(
                "created the system user and group ttp: the daemon runs as ttp once set up; \
                 members of the group may use `ttp status`, `streams`, `check`"
            );
        }
        if Path::new("/run/systemd/system").exists() {
            run(Command::new("systemctl").arg("daemon-reload"))?;
            println!("systemd unit installed: `systemctl enable --now ttp` starts ttp at boot");
        }
    }
    Ok(())
}

pub fn uninstall(prefix: &Path, runtime_dir: &Path, pin_dir: &Path, keep_state: bool) -> Result<()> {
    let system = prefix == Path::new("/");
    if system {
        crate::cli::watchdog::stop(runtime_dir);
        crate::cli::stop::stop(runtime_dir, pin_dir)?;
        if Path::new("/run/systemd/system").exists() && under(prefix, LOCAL.unit).exists() {
            let _ = run(Command::new("systemctl").args(["disable", "--now", "ttp"]));
        }
    }
    let mut removed = 0;
    for rel in LOCAL.files() {
        let p = under(prefix, rel);
        match std::fs::remove_file(&p) {
            Ok(()) => {
                println!("removed {}", p.display());
                removed += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    if !keep_state {
        for rel in [CONFIG_DIR, STATE_DIR] {
            let p = under(prefix, rel);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                println!("removed {}", p.display());
                removed += 1;
            }
        }
    }
    if system {
        if nix::unistd::User::from_name(ttp::user::DEFAULT)?.is_some() {
            run(Command::new("userdel").arg(ttp::user::DEFAULT))?;
            println!("removed the system user ttp");
        }
        if nix::unistd::Group::from_name(ttp::user::CONTROL_GROUP)?.is_some() {
            run(Command::new("groupdel").arg(ttp::user::CONTROL_GROUP))?;
            println!("removed the group ttp");
        }
        if Path::new("/run/systemd/system").exists() {
            let _ = run(Command::new("systemctl").arg("daemon-reload"));
        }
    }
    if removed == 0 {
        println!("nothing of ttp was installed under {}", prefix.display());
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        anyhow::bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Install the binary, systemd unit, completions, man page and the `ttp` group.
#[derive(clap::Args)]
pub struct Args {
    /// Install under this root instead of / (for packaging).
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub prefix: PathBuf,
    /// Which directories: a source install's (/usr/local) or a Debian package's.
    #[arg(long, value_enum, default_value_t)]
    pub layout: LayoutKind,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        install(&self.prefix, self.layout)
    }
}

/// Stop ttp and remove what `ttp install` put on the host (and Tor's state).
#[derive(clap::Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub paths: super::Paths,
    /// Remove from under this root instead of / (for packaging).
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub prefix: PathBuf,
    /// Keep Tor's state and cache (/var/lib/ttp) and the config (/etc/ttp).
    #[arg(long)]
    pub keep_state: bool,
}

impl UninstallArgs {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        uninstall(&self.prefix, &self.paths.runtime_dir, &self.paths.pin_dir, self.keep_state)
    }
}
