//! The pin directory: where the links and maps of one instance live in bpffs.
//!
//! Pinned links are what make ttp fail closed: a link held only by a file descriptor
//! detaches when the daemon dies, a pinned one stays attached until its pin is removed.
//!
//! Layout: `<pin-dir>/links/<program>[@<iface>]`, `<pin-dir>/maps/<MAP>`, and
//! `<pin-dir>/progs/<program>` for the TC programs, which the monitor attaches to
//! interfaces that appear after start ([`super::tcx`]). A pinned program attaches
//! nothing by itself.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::MapData,
    programs::{links::FdLink, links::PinnedLink},
};

use super::maps::{Maps, PINNED};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinLayout { root: root.into() }
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }
    /// Does a (possibly crashed) instance have pins here?
    pub fn exists(&self) -> bool {
        self.maps().join(ttp_common::maps::CONFIG).exists()
    }

    /// Makes sure the pin directory is on a bpffs, mounting one at /sys/fs/bpf when the
    /// pin directory is under it and nothing is mounted there yet.
    pub fn prepare(&self) -> Result<()> {
        let bpffs = Path::new("/sys/fs/bpf");
        if !on_bpffs(&self.root)? && self.root.starts_with(bpffs) {
            // Two ttp processes starting at once (a `ttp lock` and a start, or tests) could
            // both find nothing mounted and mount twice, the second over the first, hiding
            // what the first pinned. The check and the mount go under one lock, taken on
            // the directory: whoever locks after a mount sees it.
            let dir = fs::File::open(bpffs).context("opening /sys/fs/bpf")?;
            let _locked = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .context("locking /sys/fs/bpf")?;
            if !on_bpffs(bpffs)? {
                nix::mount::mount(Some("bpffs"), bpffs, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
                    .context("mounting bpffs at /sys/fs/bpf")?;
                tracing::info!("mounted bpffs at /sys/fs/bpf");
            }
        }
        if !on_bpffs(&self.root)? {
            bail!(
                "pin directory {} is not on a bpf filesystem; mount one (mount -t bpf bpffs DIR) or pass --pin-dir under /sys/fs/bpf",
                self.root.display()
            );
        }
        fs::create_dir_all(self.maps()).with_context(|| format!("creating {}", self.maps().display()))?;
        fs::create_dir_all(self.links()).with_context(|| format!("creating {}", self.links().display()))?;
        fs::create_dir_all(self.progs()).with_context(|| format!("creating {}", self.progs().display()))?;
        Ok(())
    }

    /// Pin files of links, sorted for a stable order.
    pub fn link_pins(&self) -> Result<Vec<PathBuf>> {
        list(&self.links()).context("listing pinned links")
    }

    /// Pin files of programs, sorted.
    pub fn prog_pins(&self) -> Result<Vec<PathBuf>> {
        list(&self.progs()).context("listing pinned programs")
    }

    /// Removes the (empty) directories of the layout; missing ones are fine.
    fn remove_dirs(&self) -> Result<()> {
        for d in [self.links(), self.maps(), self.progs(), self.root.clone()] {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", d.display())),
            }
        }
        Ok(())
    }
}

/// The files in `dir`, sorted; none if it does not exist.
fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect::<Vec<_>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    v.sort();
    Ok(v)
}

/// Is `path` (or its nearest existing ancestor) on a bpffs?
fn on_bpffs(path: &Path) -> Result<bool> {
    let mut p = path;
    loop {
        match nix::sys::statfs::statfs(p) {
            Ok(s) => return Ok(s.filesystem_type().0 == BPF_FS_MAGIC),
            Err(nix::errno::Errno::ENOENT) => match p.parent() {
                Some(parent) => p = parent,
                None => return Ok(false),
            },
            Err(e) => return Err(e).with_context(|| format!("statfs {}", p.display())),
        }
    }
}

/// The links and maps of an earlier instance, unpinned but still held open, so they stay
/// attached (and the host closed) until the new instance is attached. Dropping it detaches
/// them; [`Stale::restore`] pins them back if the new start fails.
pub struct Stale {
    links: Vec<(PathBuf, FdLink)>,
    maps: Vec<(PathBuf, MapData)>,
    progs: Vec<(PathBuf, std::os::fd::OwnedFd)>,
}

impl Stale {
    /// Takes over the pins of an earlier instance, if any: lockdown on first, then every
    /// pin is removed while its object is kept open.
    pub fn take_over(layout: &PinLayout) -> Result<Option<Stale>> {
        if !layout.exists() && layout.link_pins()?.is_empty() {
            return Ok(None);
        }
        if layout.exists() {
            if let Err(e) = Maps::set_lockdown_pinned(&layout.maps(), true) {
                tracing::warn!("stale pins in {}: cannot set lockdown: {e:#}", layout.root.display());
            }
        }
        let mut links = Vec::new();
        for p in layout.link_pins()? {
            let link = PinnedLink::from_pin(&p).with_context(|| format!("opening stale link {}", p.display()))?;
            links.push((p.clone(), link.unpin().with_context(|| format!("unpinning {}", p.display()))?));
        }
        let mut maps = Vec::new();
        for name in PINNED {
            let p = layout.maps().join(name);
            if p.exists() {
                let m = MapData::from_pin(&p).with_context(|| format!("opening stale map {}", p.display()))?;
                fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
                maps.push((p, m));
            }
        }
        // Its programs too: its monitor, if alive, attaches them to interfaces that appear.
        let mut progs = Vec::new();
        for p in layout.prog_pins()? {
            let fd = super::obj_get(&p, 0).with_context(|| format!("opening stale program {}", p.display()))?;
            fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
            progs.push((p, fd));
        }
        tracing::info!("took over {} stale links and {} maps from {}", links.len(), maps.len(), layout.root.display());
        Ok(Some(Stale { links, maps, progs }))
    }

    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Puts the pins back (the new start failed: leave the host as closed as we found it).
    pub fn restore(self, layout: &PinLayout) -> Result<()> {
        fs::create_dir_all(layout.links())?;
        fs::create_dir_all(layout.maps())?;
        fs::create_dir_all(layout.progs())?;
        for (p, fd) in self.progs {
            super::obj_pin(&p, &fd).with_context(|| format!("re-pinning {}", p.display()))?;
        }
        for (p, m) in self.maps {
            m.pin(&p).with_context(|| format!("re-pinning {}", p.display()))?;
        }
        for (p, l) in self.links {
            l.pin(&p).with_context(|| format!("re-pinning {}", p.display()))?;
        }
        Ok(())
    }
}

/// What [`teardown`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Teardown {
    pub links_detached: usize,
    pub maps_unpinned: usize,
}

/// Removes an instance: lockdown on, then every link detached and every pin removed.
/// Works whether or not the daemon is alive; with nothing pinned it does nothing.
pub fn teardown(layout: &PinLayout) -> Result<Teardown> {
    let mut report = Teardown::default();
    if layout.exists() && layout.maps().join(ttp_common::maps::CONFIG).exists() {
        Maps::set_lockdown_pinned(&layout.maps(), true)?;
    }
    for p in layout.link_pins()? {
        // Removing the pin drops the last reference: the kernel detaches the link.
        let link = PinnedLink::from_pin(&p).with_context(|| format!("opening link {}", p.display()))?;
        drop(link.unpin().with_context(|| format!("unpinning {}", p.display()))?);
        report.links_detached += 1;
    }
    for p in layout.prog_pins()? {
        // A program is attached only through links (gone above): its pin just goes.
        fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
    }
    for name in PINNED {
        let p = layout.maps().join(name);
        match fs::remove_file(&p) {
            Ok(()) => report.maps_unpinned += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {}", p.display())),
        }
    }
    layout.remove_dirs()?;
    Ok(report)
}
