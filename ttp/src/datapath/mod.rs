//! The kernel datapath: loads ttp's eBPF programs, configures them, attaches them to the
//! governed cgroup and the uplinks, and pins everything so a dead daemon leaves the host
//! closed.
//!
//! Start order is kill-switch first (skb, tc), redirection last, and an earlier instance's
//! pins are taken over in lockdown and only released once the new programs are attached,
//! so there is no moment when the host is open.

pub mod maps;
pub mod pins;
pub mod tcx;

use std::{
    fs::File,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{
        links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockopt,
        LinkOrder, LsmCgroup, SchedClassifier, SockOps, TcAttachType,
    },
    Ebpf,
};
use serde::{Deserialize, Serialize};
use ttp_common::{flags, programs as prog, Config, ANY_UID};

pub use self::{
    maps::{Maps, ServiceMaps},
    pins::{teardown, PinLayout, Stale, Teardown},
};
use crate::cgroup;

/// The eBPF object, built by build.rs from the ttp-ebpf crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ttp"));

/// What to do with IPv6 from governed sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Ipv6Policy {
    /// Send IPv6 TCP and DNS through Tor like IPv4.
    #[default]
    Tor,
    /// Refuse every IPv6 connect and datagram.
    Drop,
}

/// The live-updatable part of the datapath: who goes direct and what is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Let RFC 1918, link-local and unique-local destinations go direct, and of multicast
    /// and broadcast DHCP and (with `lan_discovery`) mDNS (`ttp_ebpf::lan_allowed`).
    pub lan_bypass: bool,
    /// With LAN bypass, let mDNS go direct too.
    pub lan_discovery: bool,
    /// Let uid 0 go direct.
    pub allow_root: bool,
    pub ipv6: Ipv6Policy,
    pub bypass_uids: Vec<u32>,
    pub bypass_gids: Vec<u32>,
    /// cgroup2 directories whose whole subtree goes direct (split tunneling).
    pub bypass_cgroups: Vec<PathBuf>,
    /// DNS-over-HTTPS resolvers: TCP 443 to them is refused so browsers use system DNS.
    pub doh_resolvers: Vec<IpAddr>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            lan_bypass: true,
            lan_discovery: true,
            allow_root: false,
            ipv6: Ipv6Policy::Tor,
            bypass_uids: Vec::new(),
            bypass_gids: Vec::new(),
            bypass_cgroups: Vec::new(),
            doh_resolvers: DEFAULT_DOH_RESOLVERS.iter().map(|s| s.parse().expect("valid literal")).collect(),
        }
    }
}

/// Well-known public DoH resolvers that browsers use by default.
pub const DEFAULT_DOH_RESOLVERS: &[&str] = &[
    "1.1.1.1",
    "1.0.0.1",
    "8.8.8.8",
    "8.8.4.4",
    "9.9.9.9",
    "149.112.112.112",
    "208.67.222.222",
    "208.67.220.220",
    "94.140.14.14",
    "2606:4700:4700::1111",
    "2606:4700:4700::1001",
    "2001:4860:4860::8888",
    "2001:4860:4860::8844",
    "2620:fe::fe",
    "2620:fe::9",
];

/// Everything the datapath needs to start.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// The cgroup2 directory whose subtree is governed.
    pub cgroup: PathBuf,
    /// Interfaces that get the TC egress kill-switch.
    pub uplinks: Vec<String>,
    /// Gateway interfaces (the tunnel's TUN, LAN interfaces): what other machines send
    /// in on them is steered into the TransPort and DNSPort, the rest dropped: names, or
    /// prefixes and `*` ([`crate::ifname`]). One that does not exist yet (a container
    /// engine's bridge) gets its programs from the monitor when it appears ([`tcx`]).
    pub gateways: Vec<String>,
    /// Per-instance directory in bpffs.
    pub pin_dir: PathBuf,
    pub trans_port: u16,
    pub dns_port: u16,
    /// The daemon's own cgroup: exempt, and never the governed cgroup or an ancestor of it.
    pub daemon_cgroup: PathBuf,
    /// The daemon's uid (None: any uid in the daemon cgroup).
    pub daemon_uid: Option<u32>,
    /// The DNSPort's virtual IPv4 range (.onion automapping): always redirected.
    pub virtual_v4: Option<ipnet::Ipv4Net>,
    pub policy: Policy,
    /// Attach in lockdown (everything governed refused) until the services are ready.
    pub start_locked: bool,
}

/// A running datapath.
pub struct Datapath {
    pub maps: Maps,
    layout: PinLayout,
    _ebpf: Ebpf,
}

impl Datapath {
    /// Loads, configures, attaches and pins. On failure nothing of this instance is left
    /// and an earlier instance's pins are put back.
    pub fn start(opts: &DatapathOptions) -> Result<(Datapath, Option<ProgramLogger>)> {
        let cgroup_root = cgroup::cgroup2_root()?;
        let governed = cgroup::cgroup_id(&opts.cgroup)?;
        let daemon = cgroup::cgroup_id(&opts.daemon_cgroup)?;
        if opts.cgroup.starts_with(&opts.daemon_cgroup) || governed == daemon {
            bail!(
                "the daemon cgroup {} must not contain the governed cgroup {}: everything in it would be exempt",
                opts.daemon_cgroup.display(),
                opts.cgroup.display()
            );
        }
        let layout = PinLayout::new(&opts.pin_dir);
        layout.prepare()?;
        let stale = Stale::take_over(&layout)?;
        match Self::load_and_attach(opts, &layout, cgroup_root, daemon) {
            Ok(ok) => {
                if let Some(s) = stale {
                    tracing::info!("released {} links of the earlier instance", s.link_count());
                }
                Ok(ok)
            }
            Err(e) => {
                // Remove whatever this attempt pinned, then give the earlier instance back.
                if let Err(te) = teardown(&layout) {
                    tracing::error!("cleaning up after a failed start: {te:#}");
                }
                if let Some(s) = stale {
                    s.restore(&layout).context("restoring the earlier instance's pins")?;
                }
                Err(e)
            }
        }
    }

    fn load_and_attach(
        opts: &DatapathOptions,
        layout: &PinLayout,
        cgroup_root: PathBuf,
        daemon_cgroup: u64,
    ) -> Result<(Datapath, Option<ProgramLogger>)> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading the eBPF object (is BPF supported and are we root?)")?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("eBPF logs unavailable: {e}");
                None
            }
        };
        for name in maps::PINNED {
            let m = ebpf.map(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
            m.pin(layout.maps().join(name)).with_context(|| format!("pinning map {name}"))?;
        }
        let mut maps = Maps::from_maps(|name| ebpf.take_map(name).with_context(|| format!("map {name} missing")))?;

        let base = Config {
            trans_port: opts.trans_port,
            dns_port: opts.dns_port,
            flags: 0,
            daemon_cgroup,
            daemon_uid: opts.daemon_uid.unwrap_or(ANY_UID),
            virt4_net: opts.virtual_v4.map_or(0, |n| n.network().into()),
            virt4_mask: opts.virtual_v4.map_or(0, |n| n.netmask().into()),
            // A subtree: the uplink kill-switch must not close the rest of the host.
            governed_level: governed_level(&cgroup_root, &opts.cgroup),
            governed_cgroup: if opts.cgroup == cgroup_root { 0 } else { cgroup::cgroup_id(&opts.cgroup)? },
            // Containers' sockets are told apart only when the whole host is governed: then
            // the uplinks drop every packet nobody governed owns, so what a container sends
            // leaves only through a gateway interface (ttp_common::Config::host_netns).
            host_netns: if opts.cgroup == cgroup_root { netns_cookie()? } else { 0 },
        };
        write_policy(&mut maps, &cgroup_root, base, &opts.policy)?;
        if opts.start_locked {
            maps.set_lockdown(true)?;
        }
        for iface in &opts.uplinks {
            let (index, l2) = link_of(iface)?;
            maps.set_uplink(index, l2)?;
        }
        // The gateway interfaces there now; the monitor takes the others when they appear.
        let gateways = crate::ifname::present(&opts.gateways);
        for iface in &gateways {
            let (index, l2) = link_of(iface)?;
            maps.set_gateway(index, l2)?;
        }

        // Kill-switch first, redirection last.
        let cg = File::open(&opts.cgroup).with_context(|| format!("opening cgroup {}", opts.cgroup.display()))?;
        // Links always coexist with other links; the kernel rejects BPF_F_ALLOW_MULTI on them.
        let mode = CgroupAttachMode::Single;
        for name in [prog::SOCK_CREATE, prog::SOCK_RELEASE] {
            let p: &mut CgroupSock = program(&mut ebpf, name)?;
            p.load().map_err(aya_err).with_context(|| format!("loading {name}"))?;
            let id = p.attach(&cg, mode).map_err(aya_err).with_context(|| format!("attaching {name}"))?;
            pin(layout, name, p.take_link(id)?.try_into()?)?;
        }
        {
            let p: &mut CgroupSkb = program(&mut ebpf, prog::SKB_EGRESS)?;
            p.load().map_err(aya_err).context("loading skb_egress")?;
            let id =
                p.attach(&cg, CgroupSkbAttachType::Egress, mode).map_err(aya_err).context("attaching skb_egress")?;
            pin(layout, prog::SKB_EGRESS, p.take_link(id)?.try_into()?)?;
        }
        // Frame sockets must not skip TC egress: their bypass options are refused...
        {
            let p: &mut CgroupSockopt = program(&mut ebpf, prog::SETSOCKOPT)?;
            p.load().map_err(aya_err).context("loading setsockopt")?;
            let link = link_create(p.fd().map_err(aya_err)?.as_fd(), cg.as_raw_fd() as u32, BPF_CGROUP_SETSOCKOPT)
                .context("attaching setsockopt")?;
            pin_fd(layout, prog::SETSOCKOPT, &link)?;
        }
        // ...and where the kernel allows BPF LSM programs, the sockets themselves are
        // refused where they are made. Without it: said, not fatal.
        match attach_socket_create(&mut ebpf, &cg) {
            Ok(link) => pin(layout, prog::SOCKET_CREATE, link)?,
            Err(e) => tracing::warn!(
                "governed processes' packet sockets are NOT refused: {e:#}. A governed root process could \
                 send frames past the kill-switch; enable BPF LSM (boot with lsm=...,bpf) to close this"
            ),
        }
        {
            let p: &mut SchedClassifier = program(&mut ebpf, prog::TC_EGRESS)?;
            p.load().map_err(aya_err).context("loading tc_egress")?;
            // Pinned for uplinks that come later (see tcx).
            p.pin(layout.progs().join(prog::TC_EGRESS)).context("pinning tc_egress")?;
            for iface in &opts.uplinks {
                let id = p
                    .attach_with_options(
                        iface,
                        TcAttachType::Egress,
                        aya::programs::tc::TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(aya_err)
                    .with_context(|| format!("attaching the TC kill-switch to {iface} (tcx needs Linux 6.6+)"))?;
                pin(layout, &tcx::pin_name(prog::TC_EGRESS, iface), p.take_link(id)?.try_into()?)?;
            }
        }
        for (name, direction) in
            [(prog::TC_GATEWAY, TcAttachType::Ingress), (prog::TC_GATEWAY_EGRESS, TcAttachType::Egress)]
        {
            if opts.gateways.is_empty() {
                break;
            }
            let p: &mut SchedClassifier = program(&mut ebpf, name)?;
            p.load().map_err(aya_err).with_context(|| format!("loading {name}"))?;
            p.pin(layout.progs().join(name)).with_context(|| format!("pinning {name}"))?;
            for iface in &gateways {
                let id = p
                    .attach_with_options(
                        iface,
                        direction,
                        aya::programs::tc::TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(aya_err)
                    .with_context(|| format!("attaching {name} to {iface} (tcx needs Linux 6.6+)"))?;
                pin(layout, &tcx::pin_name(name, iface), p.take_link(id)?.try_into()?)?;
            }
        }
        {
            let p: &mut SockOps = program(&mut ebpf, prog::SOCK_OPS)?;
            p.load().map_err(aya_err).context("loading sock_ops")?;
            let id = p.attach(&cg, mode).map_err(aya_err).context("attaching sock_ops")?;
            pin(layout, prog::SOCK_OPS, p.take_link(id)?.try_into()?)?;
        }
        for name in [
            prog::GETPEERNAME4,
            prog::GETPEERNAME6,
            prog::RECVMSG4,
            prog::RECVMSG6,
            prog::SENDMSG4,
            prog::SENDMSG6,
            prog::CONNECT4,
            prog::CONNECT6,
        ] {
            let p: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            p.load().map_err(aya_err).with_context(|| format!("loading {name}"))?;
            let id = p.attach(&cg, mode).map_err(aya_err).with_context(|| format!("attaching {name}"))?;
            pin(layout, name, p.take_link(id)?.try_into()?)?;
        }
        let dp = Datapath { maps, layout: layout.clone(), _ebpf: ebpf };
        Ok((dp, logger))
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// Lockdown, detach, unpin.
    pub fn stop(self) -> Result<Teardown> {
        teardown(&self.layout)
    }
}

/// A bypass cgroup given relative to the cgroup2 root (`system.slice/x.service`) or absolute.
pub fn resolve_cgroup(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() && p.starts_with(root) {
        p.to_path_buf()
    } else {
        root.join(p.strip_prefix("/").unwrap_or(p))
    }
}

/// Destroys governed applications' TCP connections that the kill-switch now closes: opened
/// before start, to a destination that is neither loopback nor (with LAN bypass) the LAN,
/// by a socket that is not exempt. Their packets would be dropped from now on; destroyed,
/// the application sees its socket closed at once and reconnects, through Tor. Needs root
/// (SOCK_DESTROY); call it once the kill-switch is attached. Bypass gids are not known
/// per socket: such a connection is spared only if its uid or cgroup is exempt too.
pub fn destroy_stranded(governed_cgroup: &Path, policy: &Policy) -> Result<usize> {
    let root = cgroup::cgroup2_root()?;
    let bypass: Vec<PathBuf> = policy.bypass_cgroups.iter().map(|p| resolve_cgroup(&root, p)).collect();
    let mut governed = std::collections::HashSet::new();
    collect_cgroup_ids(governed_cgroup, &bypass, &mut governed)?;
    let p = policy;
    let n = crate::sockdestroy::destroy_where(|s| {
        let governed_socket = s.cgroup != 0 && governed.contains(&s.cgroup) && !s.listening();
        let exempt = p.bypass_uids.contains(&s.uid) || (p.allow_root && s.uid == 0);
        let allowed_destination =
            crate::sockdestroy::is_loopback_ip(s.dst.ip()) || (p.lan_bypass && is_lan(s.dst.ip()));
        governed_socket && !exempt && !allowed_destination
    })?;
    Ok(n)
}

/// The ids of `dir` and every cgroup below it, except the subtrees in `skip`.
fn collect_cgroup_ids(dir: &Path, skip: &[PathBuf], ids: &mut std::collections::HashSet<u64>) -> Result<()> {
    if skip.iter().any(|s| s == dir) {
        return Ok(());
    }
    ids.insert(cgroup::cgroup_id(dir)?);
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_cgroup_ids(&e.path(), skip, ids)?;
        }
    }
    Ok(())
}

/// What the kernel side calls LAN (`ttp_ebpf::v4_is_lan`, `v6_is_lan`): private,
/// link-local, unique-local, multicast and broadcast addresses.
fn is_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 || v6.is_multicast()
        }
    }
}

/// How many levels below the cgroup2 root a cgroup is (the root is level 0).
fn governed_level(root: &Path, cgroup: &Path) -> u32 {
    cgroup.strip_prefix(root).map(|rel| rel.components().count() as u32).unwrap_or(0)
}

/// The bits of [`Config::flags`] that the policy sets (the rest are lifecycle: lockdown,
/// ready).
const POLICY_FLAGS: u32 =
    flags::LAN_BYPASS | flags::NO_LAN_DISCOVERY | flags::ALLOW_ROOT | flags::IPV6_DROP | flags::HAS_BYPASS_CGROUPS;

/// Replaces a running instance's policy through its pinned maps (root's `ttp reload`):
/// the sets first, then the flags, each one write, so every verdict sees either the old
/// value or the new one of each; lockdown and readiness stay as they are.
pub fn update_policy(maps: &mut Maps, cgroup_root: &Path, policy: &Policy) -> Result<()> {
    let policy_flags = write_sets(maps, cgroup_root, policy)?;
    let current = maps.config()?;
    maps.set_config(Config { flags: (current.flags & !POLICY_FLAGS) | policy_flags, ..current })
}

/// Fills the policy maps, then CONFIG with READY (keeping lockdown as it is).
fn write_policy(maps: &mut Maps, cgroup_root: &Path, base: Config, policy: &Policy) -> Result<()> {
    let policy_flags = write_sets(maps, cgroup_root, policy)?;
    let lockdown = maps.config()?.flags & flags::LOCKDOWN;
    maps.set_config(Config { flags: policy_flags | lockdown | flags::READY, ..base })
}

/// Writes the policy's sets (bypass uids, gids, cgroups, DoH resolvers); returns the
/// policy's flags for the caller to write.
fn write_sets(maps: &mut Maps, cgroup_root: &Path, policy: &Policy) -> Result<u32> {
    let ids = policy
        .bypass_cgroups
        .iter()
        .map(|p| cgroup::cgroup_id(&resolve_cgroup(cgroup_root, p)))
        .collect::<Result<Vec<_>>>()?;
    maps.apply_policy(policy, &ids)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))?;
    p.try_into().with_context(|| format!("program {name} has an unexpected type"))
}

/// aya's program errors print an empty message for failed system calls; keep the cause
/// (the syscall and errno, or the verifier log) in the text.
fn aya_err(e: aya::programs::ProgramError) -> anyhow::Error {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            anyhow::anyhow!("the verifier rejected the program ({io_error}):\n{verifier_log}")
        }
        other => anyhow::anyhow!("{other:?}"),
    }
}

/// Loads and attaches the socket_create LSM program to the governed cgroup.
fn attach_socket_create(ebpf: &mut Ebpf, cg: &File) -> Result<FdLink> {
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    match bpf_lsm_active() {
        Some(true) => {}
        Some(false) => bail!("BPF LSM is not active (bpf is missing from {LSM_LIST})"),
        None => tracing::warn!("{LSM_LIST} is not readable (securityfs not mounted): assuming BPF LSM is active"),
    }
    let p: &mut LsmCgroup = program(ebpf, prog::SOCKET_CREATE)?;
    p.load("socket_create", &btf).map_err(aya_err).context("loading socket_create")?;
    let id = p.attach(cg).map_err(aya_err).context("attaching socket_create")?;
    Ok(p.take_link(id)?.into())
}

const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// Whether the kernel runs BPF LSM (`lsm_cgroup` programs act only then); `None` when the
/// list cannot be read (securityfs not mounted).
pub fn bpf_lsm_active() -> Option<bool> {
    std::fs::read_to_string(LSM_LIST).ok().map(|l| l.trim().split(',').any(|m| m == "bpf"))
}

/// `enum bpf_attach_type`: BPF_CGROUP_SETSOCKOPT (tcx's are [`tcx::Direction`]).
const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// Attaches a program with a bpf_link to `target` (a cgroup's descriptor, or an
/// interface's index for tcx; tcx links go after the others). By hand: aya 0.14's sockopt
/// links cannot become an `FdLink`, so they could not be pinned (KNOWN.md), and the
/// monitor attaches a program it did not load (see [`tcx`]).
pub(crate) fn link_create(prog: BorrowedFd<'_>, target: u32, attach_type: u32) -> Result<OwnedFd> {
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        _rest: [u64; 6],
    }
    let attr = LinkCreate { prog_fd: prog.as_raw_fd() as u32, target_fd: target, attach_type, flags: 0, _rest: [0; 6] };
    const BPF_LINK_CREATE: libc::c_long = 28;
    bpf_new_fd(BPF_LINK_CREATE, &attr).context("BPF_LINK_CREATE")
}

/// bpf(2) for a command that returns a new descriptor. `attr` is the command's part of
/// `union bpf_attr`, `#[repr(C)]` and zero-padded past its last field.
pub(crate) fn bpf_new_fd<A>(cmd: libc::c_long, attr: &A) -> std::io::Result<OwnedFd> {
    let fd = bpf_call(cmd, attr)?;
    // SAFETY: a fresh descriptor from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// bpf(2): `cmd` with `attr` (see [`bpf_new_fd`]); its non-negative result.
fn bpf_call<A>(cmd: libc::c_long, attr: &A) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is valid for its size; the kernel reads at most that much of it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const A, std::mem::size_of::<A>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// `union bpf_attr` of BPF_OBJ_PIN and BPF_OBJ_GET: a path on bpffs, and the descriptor to
/// pin or the flags to open with.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    _rest: [u64; 6],
}

/// `path` as the C string an [`ObjAttr`] points to (it must outlive the call).
fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// Pins a link given by its descriptor (see [`link_create`]).
pub(crate) fn pin_fd(layout: &PinLayout, name: &str, link: &OwnedFd) -> Result<()> {
    let path = layout.links().join(name);
    obj_pin(&path, link).with_context(|| format!("pinning link {}", path.display()))
}

/// Pins a BPF object (a link, a program) at `path` on bpffs.
pub(crate) fn obj_pin(path: &Path, obj: &OwnedFd) -> std::io::Result<()> {
    const BPF_OBJ_PIN: libc::c_long = 6;
    let c = c_path(path)?;
    let attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: obj.as_raw_fd() as u32, file_flags: 0, _rest: [0; 6] };
    bpf_call(BPF_OBJ_PIN, &attr).map(drop)
}

/// `BPF_OBJ_GET`'s flag for a read-only descriptor.
pub(crate) const BPF_F_RDONLY: u32 = 1 << 3;

/// Opens a pinned object with `file_flags` (`BPF_F_RDONLY`: updates and deletes through
/// the descriptor fail with EPERM, whoever holds it).
pub(crate) fn obj_get(path: &Path, file_flags: u32) -> std::io::Result<OwnedFd> {
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = c_path(path)?;
    bpf_new_fd(BPF_OBJ_GET, &ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags, _rest: [0; 6] })
}

fn pin(layout: &PinLayout, name: &str, link: FdLink) -> Result<()> {
    let path = layout.links().join(name);
    link.pin(&path).with_context(|| format!("pinning link {}", path.display()))?;
    Ok(())
}

/// The cookie of the network namespace we run in, as `bpf_get_netns_cookie` gives it to
/// the programs. By hand: neither nix nor socket2 has `SO_NETNS_COOKIE` (Linux 5.14).
fn netns_cookie() -> Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("socket for SO_NETNS_COOKIE")?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: an open socket, and a u64 with its length for the kernel to fill.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_NETNS_COOKIE (Linux 5.14 or newer)");
    }
    Ok(cookie)
}

/// Interface index and link-layer header length (14 for Ethernet, 0 for L3 devices
/// such as TUN and WireGuard). Uses ioctls, not /sys: sysfs shows the mount namespace's
/// network namespace, which need not be ours.
pub(crate) fn link_of(iface: &str) -> Result<(u32, u32)> {
    let index = nix::net::if_::if_nametoindex(iface).with_context(|| format!("no interface named {iface}"))?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").context("socket for interface ioctl")?;
    // SAFETY: ifreq is plain data; the name fits (if_nametoindex accepted it).
    let hwtype = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(iface.as_bytes()) {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("SIOCGIFHWADDR on {iface}"));
        }
        req.ifr_ifru.ifru_hwaddr.sa_family
    };
    let l2 = if hwtype == libc::ARPHRD_ETHER || hwtype == libc::ARPHRD_LOOPBACK { 14 } else { 0 };
    Ok((index, l2))
}

/// The programs' aya-log records, forwarded to `log` (and so to tracing).
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Forwards the programs' log records until the ring buffer fails.
pub async fn forward_logs(logger: ProgramLogger) -> Result<()> {
    struct Fd(ProgramLogger);
    impl std::os::fd::AsRawFd for Fd {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            std::os::fd::AsFd::as_fd(&self.0).as_raw_fd()
        }
    }
    // SAFETY: the logger owns its ring buffer's descriptor and keeps it open and unchanged
    // for as long as the AsyncFd owns the logger.
    let mut fd = unsafe { tokio::io::unix::AsyncFd::register(Fd(logger)) }
        .map_err(|e| anyhow::anyhow!("watching the eBPF log ring buffer: {e}"))?;
    loop {
        let mut ready = fd.readable_mut().await.context("eBPF log ring buffer")?;
        ready.get_inner_mut().0.flush();
        ready.clear_ready();
    }
}
