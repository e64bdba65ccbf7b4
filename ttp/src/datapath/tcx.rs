//! TC programs on interfaces that appear after start, or go and come back.
//!
//! The datapath attaches its TC programs to the interfaces that exist when it starts.
//! Others come later: a container engine's bridge (docker0 when docker.service starts,
//! Podman's when its first container runs), a Wi-Fi or tethering uplink. And interfaces
//! go and come back under the same name: Podman deletes its bridge with its last
//! container, a USB modem is unplugged. The kernel detaches a tcx link when its interface
//! goes; the pin then holds a link to nothing, under a name a new interface of that name
//! must not be taken to have. So [`ensure`] compares the interface a pinned link is
//! attached to *now* with the current index of the name, and attaches again when they
//! differ.
//!
//! The programs come from their own pins (`<pin-dir>/progs/`), which the datapath makes
//! at start, whether or not an interface for them exists yet. Root's work (attaching needs
//! `CAP_NET_ADMIN`, which the daemon gave up): the monitor's followers call it.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result};

use super::{bpf_call, link_create, obj_get, PinLayout};

/// Which way through an interface a program sees packets (`enum bpf_attach_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress = 46,
    Egress = 47,
}

/// The pin of `program`'s link on `iface` (bpffs refuses dots, which VLAN interfaces have).
pub fn pin_name(program: &str, iface: &str) -> String {
    format!("{program}@{}", iface.replace('.', "_"))
}

/// What [`ensure`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// The pinned link is on the interface of that name: nothing to do.
    Already,
    /// There was no link: attached and pinned.
    New,
    /// The pinned link's interface is gone (or another one has the name now): attached to
    /// the current one, and its pin replaced.
    Again,
}

/// Makes `program` attached, through a pinned link, to the interface named `iface`, whose
/// index is `ifindex` now.
pub fn ensure(layout: &PinLayout, program: &str, iface: &str, ifindex: u32, direction: Direction) -> Result<Attached> {
    let pin = layout.links().join(pin_name(program, iface));
    let again = match attached_to(&pin) {
        Ok(Some(now)) if now == ifindex => return Ok(Attached::Already),
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading the pinned link {}", pin.display())),
    };
    let prog = obj_get(&layout.progs().join(program), 0)
        .with_context(|| format!("opening the pinned program {program} (from the datapath's start)"))?;
    let link = link_create(prog.as_fd(), ifindex, direction as u32)
        .with_context(|| format!("attaching {program} to {iface}"))?;
    if again {
        // The old link is attached to nothing: its pin goes, and with it the link.
        std::fs::remove_file(&pin).with_context(|| format!("removing the stale pin {}", pin.display()))?;
    }
    if let Err(e) = super::pin_fd(layout, &pin_name(program, iface), &link) {
        // Attached but not pinned: it holds as long as this process (the monitor) lives,
        // which is better than not at all; the next change tries to pin again.
        std::mem::forget(link);
        return Err(e);
    }
    Ok(if again { Attached::Again } else { Attached::New })
}

/// The interface index a pinned tcx link is attached to now: `None` once its interface is
/// gone (the kernel reports 0), or if the pin is not a tcx link.
pub fn attached_to(pin: &Path) -> std::io::Result<Option<u32>> {
    let link = obj_get(pin, 0)?;
    let info = link_info(&link)?;
    /// `enum bpf_link_type`.
    const BPF_LINK_TYPE_TCX: u32 = 11;
    Ok((info.kind == BPF_LINK_TYPE_TCX && info.ifindex != 0).then_some(info.ifindex))
}

/// The head of `struct bpf_link_info` and its tcx part. By hand: aya 0.14's `LinkInfo`
/// gives the link's type and program, not the interface a tcx link is on.
#[repr(C)]
#[derive(Default)]
struct TcxLinkInfo {
    kind: u32,
    _id: u32,
    _prog_id: u32,
    /// The union after it is 8-byte aligned.
    _pad: u32,
    ifindex: u32,
}

fn link_info(link: &OwnedFd) -> std::io::Result<TcxLinkInfo> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = TcxLinkInfo::default();
    let attr = InfoByFd {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<TcxLinkInfo>() as u32,
        info: &mut info as *mut TcxLinkInfo as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    bpf_call(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    Ok(info)
}
