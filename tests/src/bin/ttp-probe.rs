//! A stand-in daemon for the datapath tests: the real loader (`ttp::datapath`) plus a
//! TransPort that only reports the original destination it recovered, and a DNSPort that
//! answers every A/AAAA query with a fixed address. No Tor: it tests the kernel side alone.
//!
//! Prints `READY` when attached and listening. SIGTERM: clean stop (teardown). SIGKILL:
//! leaves the pins, which is what the fail-closed tests want.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
};
use ttp::datapath::{Datapath, DatapathOptions, Ipv6Policy, Policy, ServiceMaps};

/// Address every A query is answered with.
pub const ANSWER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
pub const ANSWER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 7);

#[derive(Parser)]
struct Args {
    #[arg(long)]
    cgroup: PathBuf,
    #[arg(long)]
    daemon_cgroup: PathBuf,
    #[arg(long)]
    uplink: Vec<String>,
    #[arg(long)]
    pin_dir: PathBuf,
    #[arg(long, default_value_t = 9040)]
    trans_port: u16,
    #[arg(long, default_value_t = 9053)]
    dns_port: u16,
    #[arg(long)]
    no_lan_bypass: bool,
    #[arg(long)]
    no_lan_discovery: bool,
    #[arg(long, value_enum, default_value_t = Ipv6Policy::Tor)]
    ipv6: Ipv6Policy,
    #[arg(long)]
    bypass_uid: Vec<u32>,
    #[arg(long)]
    bypass_gid: Vec<u32>,
    #[arg(long)]
    bypass_cgroup: Vec<PathBuf>,
    #[arg(long)]
    doh: Vec<IpAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let a = Args::parse();
    ttp::cgroup::move_into(&a.daemon_cgroup, std::process::id())?;
    let mut policy = Policy {
        lan_bypass: !a.no_lan_bypass,
        lan_discovery: !a.no_lan_discovery,
        ipv6: a.ipv6,
        bypass_uids: a.bypass_uid,
        bypass_gids: a.bypass_gid,
        bypass_cgroups: a.bypass_cgroup,
        ..Policy::default()
    };
    policy.doh_resolvers.extend(a.doh);
    let opts = DatapathOptions {
        cgroup: a.cgroup,
        uplinks: a.uplink,
        gateways: vec![],
        pin_dir: a.pin_dir,
        trans_port: a.trans_port,
        dns_port: a.dns_port,
        daemon_cgroup: a.daemon_cgroup,
        daemon_uid: None,
        virtual_v4: None,
        start_locked: false,
        policy,
    };
    let (dp, logger) = Datapath::start(&opts)?;
    let n = ttp::datapath::destroy_stranded(&opts.cgroup, &opts.policy)?;
    tracing::info!("{n} connections opened before start closed");
    let layout = dp.layout().clone();
    let maps = Arc::new(Mutex::new(ServiceMaps::open_pinned(&layout.maps())?));
    if let Some(logger) = logger {
        tokio::spawn(ttp::datapath::forward_logs(logger));
    }

    for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
        let t = TcpListener::bind((ip, a.trans_port)).await.with_context(|| format!("TransPort on {ip}"))?;
        tokio::spawn(trans_port(t, maps.clone()));
        let u = UdpSocket::bind((ip, a.dns_port)).await.with_context(|| format!("DNSPort on {ip}"))?;
        tokio::spawn(dns_udp(u));
        let d = TcpListener::bind((ip, a.dns_port)).await.with_context(|| format!("DNSPort/TCP on {ip}"))?;
        tokio::spawn(dns_tcp(d));
    }
    println!("READY");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    let report = dp.stop()?;
    eprintln!("stopped: {report:?}");
    Ok(())
}

async fn trans_port(l: TcpListener, maps: Arc<Mutex<ServiceMaps>>) {
    while let Ok((mut s, peer)) = l.accept().await {
        let orig = maps.lock().expect("maps lock").take_original_destination(peer);
        tracing::info!(%peer, ?orig, "TransPort accepted");
        let line = match orig {
            Some(o) => format!("ORIG {o}\n"),
            None => "ORIG none\n".to_string(),
        };
        let _ = s.write_all(line.as_bytes()).await;
    }
}

fn answer(query: &[u8]) -> Option<Vec<u8>> {
    ttp_tests::dns_answer(query, ANSWER_V4, Some(ANSWER_V6))
}

async fn dns_udp(s: UdpSocket) {
    let mut buf = vec![0u8; 4096];
    while let Ok((n, peer)) = s.recv_from(&mut buf).await {
        if let Some(r) = answer(&buf[..n]) {
            let _ = s.send_to(&r, peer).await;
        }
    }
}

async fn dns_tcp(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut len = [0u8; 2];
            while s.read_exact(&mut len).await.is_ok() {
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if s.read_exact(&mut q).await.is_err() {
                    return;
                }
                let Some(r) = answer(&q) else { return };
                let mut out = (r.len() as u16).to_be_bytes().to_vec();
                out.extend(r);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}
