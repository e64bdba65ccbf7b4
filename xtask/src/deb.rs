//! `cargo xtask deb`: ttp as a Debian package, made by Debian's own tools.
//!
//! The package's tree is what `ttp install --layout debian` writes (binary, unit,
//! completions, man page, the commented config), so a package and a source install can
//! never disagree about what ttp puts on a host. This module adds only what makes that
//! tree a Debian package, with the tools Debian itself uses for it: `dpkg-shlibdeps` for
//! the library dependencies, `dpkg-deb` to build, `lintian` to check. (cargo-deb would
//! generate the same control file, but it builds with a profile of its own: the tests,
//! the booted-system harness and the package must share one build.)

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cargo, root, sh};

#[derive(clap::Args)]
pub struct Args {
    /// Cargo profile of the binary to package: `release` to ship; the tests package the
    /// `dev` build they already made.
    #[arg(long, default_value = "release")]
    pub profile: String,
    /// Skip lintian.
    #[arg(long)]
    pub no_lint: bool,
    /// Also build (or find cached) the booted-Debian root the system tests boot.
    #[arg(long)]
    pub system_root: bool,
}

const MAINTAINER: &str = "ttp developers <ttp@users.noreply.github.com>";

pub fn run(args: &Args) -> Result<PathBuf> {
    sh(cargo().args(["build", "-p", "ttp", "--profile", &args.profile]))?;
    let deb = package(&args.profile)?;
    if !args.no_lint {
        lint(&deb)?;
    }
    if args.system_root {
        eprintln!("==> system root: {}", system_root()?.display());
    }
    eprintln!("==> {}", deb.display());
    Ok(deb)
}

/// Where cargo puts a profile's binaries (the dev profile's directory is `debug`).
fn profile_dir(profile: &str) -> PathBuf {
    root().join("target").join(if profile == "dev" { "debug" } else { profile })
}

/// Where the package of a profile goes: `target/debian/<profile>/ttp_<version>_<arch>.deb`.
pub fn out_dir(profile: &str) -> PathBuf {
    root().join("target/debian").join(profile)
}

/// Packages the already built `ttp` of `profile`; returns the .deb's path.
pub fn package(profile: &str) -> Result<PathBuf> {
    let bin = profile_dir(profile).join("ttp");
    if !bin.exists() {
        bail!("{} is not built: cargo build -p ttp --profile {profile}", bin.display());
    }
    let out = out_dir(profile);
    let stage = out.join("stage");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage)?;
    let quiet = |c: &mut Command| -> Result<()> {
        let o = c.output().with_context(|| format!("running {c:?}"))?;
        if !o.status.success() {
            bail!("{c:?} failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    };
    quiet(Command::new(&bin).arg("install").arg("--prefix").arg(&stage).args(["--layout", "debian"]))?;
    // As dh_strip does: debug info and notes out, symbols a backtrace needs out too.
    let staged_bin = stage.join("usr/bin/ttp");
    quiet(
        Command::new("strip")
            .args(["--remove-section=.comment", "--remove-section=.note", "--strip-unneeded"])
            .arg(&staged_bin),
    )?;
    // Man pages are compressed, without a timestamp (reproducible).
    quiet(Command::new("gzip").args(["-9nf"]).arg(stage.join("usr/share/man/man1/ttp.1")))?;

    let version = format!("{}-1", crate_version()?);
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let date = output(Command::new("git").args(["log", "-1", "--format=%aD"]).current_dir(root()))
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into());

    let doc = stage.join("usr/share/doc/ttp");
    fs::create_dir_all(&doc)?;
    fs::write(doc.join("copyright"), COPYRIGHT)?;
    fs::copy(root().join("README.md"), doc.join("README.md"))?;
    fs::write(
        doc.join("changelog.Debian"),
        format!(
            "ttp ({version}) bookworm; urgency=medium\n\n  * Built from the ttp source tree by `cargo xtask deb`.\n\n -- {MAINTAINER}  {date}\n"
        ),
    )?;
    quiet(Command::new("gzip").args(["-9nf"]).arg(doc.join("changelog.Debian")))?;

    let depends = shlib_depends(&staged_bin, &out.join("shlibs"))?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let mut control = String::new();
    write!(
        control,
        "Package: ttp\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {size}\nDepends: {depends}, passwd\n\
         Suggests: obfs4proxy, snowflake-client\nSection: net\nPriority: optional\n\
         Description: transparent Tor proxy for the whole host, failing closed\n \
         ttp sends all of a Linux host's traffic through Tor: eBPF programs in the\n \
         kernel steer every TCP connection and DNS query to an embedded Tor client\n \
         (Arti), and drop everything else. The kill-switch is pinned in the kernel:\n \
         if the daemon crashes or fails, the host stays closed until root stops ttp.\n \
         .\n \
         The service is not started on install: `systemctl enable --now ttp` (after\n \
         reviewing /etc/ttp/ttp.toml) puts the host behind Tor.\n",
        size = installed_size_kib(&stage)?,
    )?;
    fs::write(debian.join("control"), control)?;
    fs::write(debian.join("conffiles"), "/etc/ttp/ttp.toml\n")?;
    for (name, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        fs::write(debian.join(name), text)?;
        fs::set_permissions(debian.join(name), fs::Permissions::from_mode(0o755))?;
    }
    fs::write(debian.join("md5sums"), md5sums(&stage)?)?;

    let deb = out.join(format!("ttp_{version}_{arch}.deb"));
    quiet(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    Ok(deb)
}

/// lintian on the package: any error fails (warnings are printed).
pub fn lint(deb: &Path) -> Result<()> {
    sh(Command::new("lintian").args(["--fail-on", "error", "--tag-display-limit", "0"]).arg(deb))
}

fn crate_version() -> Result<String> {
    let toml = fs::read_to_string(root().join("ttp/Cargo.toml"))?;
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_owned)
        .context("no version in ttp/Cargo.toml")
}

fn output(c: &mut Command) -> Result<String> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8(o.stdout)?.trim().to_string())
}

/// The shared libraries' packages with the minimal versions their symbols files give, as
/// `dpkg-shlibdeps` works them out for every Debian package. It wants a source tree's
/// `debian/control`: a minimal one in a scratch directory serves.
fn shlib_depends(bin: &Path, scratch: &Path) -> Result<String> {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(scratch.join("debian/control"), "Source: ttp\n\nPackage: ttp\nArchitecture: any\n")?;
    let out = output(Command::new("dpkg-shlibdeps").arg("-O").arg(bin).current_dir(scratch))?;
    let _ = fs::remove_dir_all(scratch);
    let depends = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no dependencies: {out}"))?;
    // The release build packs its relative relocations (DT_RELR, see ttp's build.rs),
    // which needs glibc 2.36: the binary asks for the version GLIBC_ABI_DT_RELR, which
    // libc6's symbols file does not list, so dpkg-shlibdeps does not raise libc6 for it.
    // Without this, the package would install on an older glibc and fail to start.
    let relr = fs::read(bin)?.windows(18).any(|w| w == b"GLIBC_ABI_DT_RELR\0");
    Ok(if relr { at_least_glibc(depends, GLIBC_RELR) } else { depends.to_string() })
}

/// `depends` with libc6's minimum raised to `version` where it is lower.
fn at_least_glibc(depends: &str, version: &str) -> String {
    depends
        .split(", ")
        .map(|d| match d.strip_prefix("libc6 (>= ").and_then(|v| v.strip_suffix(')')) {
            Some(v) if older(v, version) => format!("libc6 (>= {version})"),
            _ => d.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first glibc that reads DT_RELR.
const GLIBC_RELR: &str = "2.36";

/// Whether Debian version `a` is older than `b` (`dpkg --compare-versions`).
fn older(a: &str, b: &str) -> bool {
    Command::new("dpkg").args(["--compare-versions", a, "lt", b]).status().is_ok_and(|s| s.success())
}

/// dpkg's Installed-Size: KiB, each file rounded up.
fn installed_size_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for f in files(dir)? {
        total += fs::symlink_metadata(&f)?.len().div_ceil(1024);
    }
    Ok(total)
}

/// `DEBIAN/md5sums`: every file but the control area, as `md5sum` prints them.
fn md5sums(stage: &Path) -> Result<String> {
    let rel: Vec<PathBuf> = files(stage)?
        .into_iter()
        .filter(|f| !f.starts_with(stage.join("DEBIAN")))
        .map(|f| f.strip_prefix(stage).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;
    output(Command::new("md5sum").args(&rel).current_dir(stage)).map(|s| s + "\n")
}

/// Every regular file under `dir`, sorted.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ttp

Files: *
Copyright: 2026 The ttp developers
License: MIT or Apache-2.0

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the \"Software\"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
 THE SOFTWARE.

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
";

/// After unpacking: the system user the daemon drops to (its group is the control group:
/// `ttp status` for its members). The service is not started here: it takes the whole
/// host's traffic, so it starts when its admin says (`systemctl enable --now ttp`). An
/// upgrade restarts a running ttp on the new binary; the unit's stop knows a restart
/// from a stop, so the kill-switch stays through it.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd ttp >/dev/null; then
        if getent group ttp >/dev/null; then
            useradd --system --gid ttp --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin --comment "ttp transparent Tor proxy" ttp
        else
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin --comment "ttp transparent Tor proxy" ttp
        fi
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            deb-systemd-invoke try-restart ttp.service >/dev/null || true
        fi
    fi
fi
"#;

/// Before removal: a clean stop (the host is opened by root's own request: removing the
/// package). An upgrade leaves it running; postinst restarts it.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop ttp.service >/dev/null || true
fi
"#;

/// After removal: systemd forgets the unit; a purge also removes Tor's state and cache
/// and the unit's enablement. The user stays (Debian's rule: files it owned may remain).
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
    rm -rf /var/lib/ttp
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge ttp.service ttp-lock.service >/dev/null || true
    fi
fi
"#;

/// The booted-system harness's Debian root: bookworm from debootstrap, with what the tests
/// drive inside it (systemd-resolved, curl, dig) and ttp's libraries, a user 1000, and
/// systemd-resolved pointed at the private Tor network's resolver. Built once (about a
/// minute) and reused while [`ROOT_RECIPE`] is unchanged; the tests boot overlays of it and
/// never write to it.
pub fn system_root() -> Result<PathBuf> {
    let dir = root().join("target/debian/bookworm-root");
    let stamp = dir.join(".ttp-root-recipe");
    let recipe = format!("{ROOT_RECIPE}{}\n", ROOT_PACKAGES.join(","));
    if fs::read_to_string(&stamp).ok() == Some(recipe.clone()) {
        return Ok(dir);
    }
    let _ = fs::remove_dir_all(&dir);
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    eprintln!("==> debootstrap: a Debian 12 root for the booted-system tests (about a minute, cached)");
    sh(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={}", ROOT_PACKAGES.join(",")), "bookworm"])
        .arg(&partial)
        .arg("http://deb.debian.org/debian"))?;
    let chroot = |args: &[&str]| sh(Command::new("chroot").arg(&partial).args(args));
    chroot(&["useradd", "--create-home", "--uid", "1000", "--user-group", "user"])?;
    // Resolved asks the private network's resolver directly; no DNSSEC, LLMNR or mDNS
    // (nothing answers them there, and each would only add queries to a capture).
    let conf = partial.join("etc/systemd/resolved.conf.d");
    fs::create_dir_all(&conf)?;
    fs::write(conf.join("testnet.conf"), "[Resolve]\nDNS=192.0.2.53\nDNSSEC=no\nLLMNR=no\nMulticastDNS=no\n")?;
    // Timers that would start downloads or cleanups in the middle of a test.
    for unit in ["apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"] {
        std::os::unix::fs::symlink("/dev/null", partial.join("etc/systemd/system").join(unit))?;
    }
    fs::write(partial.join("etc/hostname"), "ttp-booted\n")?;
    // Podman, for the containers test: its storage on vfs (the booted root is an overlay,
    // and overlay on overlay is refused), no cgroups of its own (the host's hierarchy is
    // hybrid, whose v1 controllers nspawn mounts read-only), and no keyring per container
    // (nspawn's system call filter refuses keyctl to the system's services).
    fs::write(
        partial.join("etc/containers/storage.conf"),
        "[storage]\ndriver = \"vfs\"\nrunroot = \"/run/containers/storage\"\ngraphroot = \"/var/lib/containers/storage\"\n",
    )?;
    let conf = partial.join("etc/containers/containers.conf.d");
    fs::create_dir_all(&conf)?;
    fs::write(conf.join("ttp-tests.conf"), "[containers]\ncgroups = \"disabled\"\nkeyring = false\n")?;
    fs::write(partial.join(".ttp-root-recipe"), recipe)?;
    fs::rename(&partial, &dir)?;
    Ok(dir)
}

/// What goes into the root; changing it (or [`ROOT_RECIPE`]) rebuilds the cache.
const ROOT_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "systemd-resolved",
    // glibc asks resolved over its socket first, as on Ubuntu and Fedora
    "libnss-resolve",
    "iproute2",
    "curl",
    "ca-certificates",
    "libssl3",
    // Arti's directory store (ttp links the system's SQLite, as Debian wants)
    "libsqlite3-0",
    "dnsutils",
    // Podman with its default network (netavark's bridge podman0, iptables rules), for
    // containers through Tor; images are not needed (`--rootfs`)
    "podman",
    "netavark",
    "aardvark-dns",
    "crun",
    "iptables",
];
/// Bump when [`system_root`] changes what it does.
const ROOT_RECIPE: &str =
    "bookworm minbase v3: user 1000; resolved asks 192.0.2.53; no timers; podman on vfs without cgroups or keyrings\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_with_packed_relocations_needs_glibc_2_36() {
        let deps = "libc6 (>= 2.34), libsqlite3-0 (>= 3.24.0), libssl3 (>= 3.0.0)";
        assert_eq!(at_least_glibc(deps, GLIBC_RELR), "libc6 (>= 2.36), libsqlite3-0 (>= 3.24.0), libssl3 (>= 3.0.0)");
        // A newer minimum stays.
        assert_eq!(at_least_glibc("libc6 (>= 2.38)", GLIBC_RELR), "libc6 (>= 2.38)");
    }
}
