//! `ttp diagnose`: what a bug report needs, in one place. Every section reports what it
//! can and says what failed, never stops at the first problem.

use std::{fmt::Write as _, path::Path};

use aya::programs::ProgramType;

use crate::{
    control::client::Client,
    datapath::{Maps, PinLayout},
};

pub fn report(runtime_dir: &Path, pin_dir: &Path) -> String {
    let mut out = String::new();
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let name = os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).unwrap_or("unknown").trim_matches('"');
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let _ = writeln!(out, "system:      {name}, kernel {kernel}");
    let _ = writeln!(
        out,
        "cgroup2:     {}",
        crate::cgroup::cgroup2_root().map(|p| p.display().to_string()).unwrap_or_else(|e| format!("MISSING ({e:#})"))
    );
    let bpffs = procfs::mounts().unwrap_or_default().iter().any(|m| m.fs_vfstype == "bpf");
    let _ =
        writeln!(out, "bpffs:       {}", if bpffs { "mounted" } else { "not mounted (ttp mounts it at /sys/fs/bpf)" });

    let _ = writeln!(out, "BPF program types ttp needs:");
    for (name, t) in [
        ("cgroup/sock_addr", ProgramType::CgroupSockAddr),
        ("cgroup/sock", ProgramType::CgroupSock),
        ("cgroup_skb", ProgramType::CgroupSkb),
        ("sock_ops", ProgramType::SockOps),
        ("sched_cls (tcx)", ProgramType::SchedClassifier),
    ] {
        let v = match aya::sys::is_program_supported(t) {
            Ok(true) => "supported".to_string(),
            Ok(false) => "NOT SUPPORTED".to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let _ = writeln!(out, "  {name:<18} {v}");
    }
    let lsm = match crate::datapath::bpf_lsm_active() {
        Some(true) => "active (governed processes get no packet sockets)",
        Some(false) => "NOT ACTIVE: governed root could send frames past the kill-switch (boot with lsm=...,bpf)",
        None => "unknown (securityfs not mounted: /sys/kernel/security/lsm)",
    };
    let _ = writeln!(out, "  {:<18} {lsm}", "BPF LSM");

    let layout = PinLayout::new(pin_dir);
    match layout.link_pins() {
        Ok(links) if !links.is_empty() => {
            let _ = writeln!(out, "datapath:    {} links pinned under {}", links.len(), pin_dir.display());
            for l in links {
                let _ =
                    writeln!(out, "  {}", l.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            }
            match Maps::read_pinned_state(&layout.maps()) {
                Ok((cfg, counters)) => {
                    let _ =
                        writeln!(out, "  config: trans {} dns {} flags {:#x}", cfg.trans_port, cfg.dns_port, cfg.flags);
                    for (c, n) in counters.iter().filter(|(_, n)| *n > 0) {
                        let _ = writeln!(out, "  {:<24} {n}", c.name());
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "  maps unreadable: {e:#}");
                }
            }
        }
        Ok(_) => {
            let _ = writeln!(out, "datapath:    nothing pinned under {} (not running)", pin_dir.display());
        }
        Err(e) => {
            let _ = writeln!(out, "datapath:    {e:#}");
        }
    }

    match Client::new(runtime_dir).status() {
        Ok(status) => {
            let _ = writeln!(out, "daemon:      running, pid {}, up {}s", status.pid, status.uptime_secs);
            let _ = writeln!(out, "tor:         {}", status.bootstrap);
            let _ = writeln!(out, "exit:        {}", status.exit_address.as_deref().unwrap_or("not verified yet"));
            let _ = writeln!(
                out,
                "ports:       trans {} dns {} socks {}",
                status.ports.trans, status.ports.dns, status.ports.socks
            );
            let _ = writeln!(out, "streams:     {} open", status.streams_open);
        }
        Err(e) => {
            let _ = writeln!(out, "daemon:      not reachable ({e:#})");
        }
    }
    match std::fs::read_to_string(runtime_dir.join("ttp.lock")) {
        Ok(lock) => {
            let _ = writeln!(out, "session:     {}", lock.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        Err(_) => {
            let _ = writeln!(out, "session:     no lock in {}", runtime_dir.display());
        }
    }
    out
}
