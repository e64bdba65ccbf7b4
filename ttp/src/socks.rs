//! The SOCKS port: SOCKS4, SOCKS4a and SOCKS5 (RFC 1928) CONNECT by name, IPv4 or IPv6;
//! RFC 1929 username/password as an isolation key (like Tor's IsolateSOCKSAuth); Tor's
//! RESOLVE and RESOLVE_PTR extensions.
//!
//! The wire protocol is tor-socksproto's (sans-I/O); `plan` decides what a request means
//! without touching a socket, and `serve` does the I/O.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use arti_client::StreamPrefs;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tor_socksproto::{
    Handshake, NextStep, SocksAddr, SocksAuth, SocksCmd, SocksProxyHandshake, SocksRequest, SocksStatus,
};

pub use crate::transport::Target;
use crate::{
    dns::Automap,
    load::{LoadStats, Share, Shares},
    principal::{IsolationKey, Owner},
    transport::PortContext,
};

/// A client that has not finished its handshake by then is closed (and counted): an idle
/// handshake holds a stream slot and a descriptor.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a SOCKS request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Connect to a name (resolved by the exit, or an onion service) or an address.
    Connect {
        target: Target,
        port: u16,
        isolation: IsolationKey,
    },
    Resolve {
        name: String,
        isolation: IsolationKey,
    },
    ResolvePtr {
        ip: IpAddr,
        isolation: IsolationKey,
    },
    /// Answer with this status and close.
    Refuse(SocksStatus),
}

impl Plan {
    /// The isolation key the plan acts for, if it opens or resolves anything.
    pub fn isolation(&self) -> Option<&IsolationKey> {
        match self {
            Plan::Connect { isolation, .. } | Plan::Resolve { isolation, .. } | Plan::ResolvePtr { isolation, .. } => {
                Some(isolation)
            }
            Plan::Refuse(_) => None,
        }
    }
}

/// Reads a request from `owner`. A virtual address the DNSPort gave `owner` is turned
/// back into its name.
pub fn plan(req: &SocksRequest, automap: &Mutex<Automap>, owner: Owner) -> Plan {
    let isolation = match req.auth() {
        SocksAuth::Username(u, p) => IsolationKey::Socks { user: u.clone(), pass: p.clone() },
        SocksAuth::Socks4(u) => IsolationKey::Socks { user: u.clone(), pass: Vec::new() },
        _ => IsolationKey::Socks { user: Vec::new(), pass: Vec::new() },
    };
    let target = match req.addr() {
        SocksAddr::Hostname(h) => Target::Name(h.as_ref().to_string()),
        SocksAddr::Ip(ip) => match crate::transport::unmap(automap, *ip, owner) {
            Ok(t) => t,
            // An expired virtual address, or another's, names nothing: never connect to it
            // as an address.
            Err(_) => return Plan::Refuse(SocksStatus::HOST_UNREACHABLE),
        },
    };
    match req.command() {
        SocksCmd::CONNECT => Plan::Connect { target, port: req.port(), isolation },
        SocksCmd::RESOLVE => match target {
            Target::Name(name) => Plan::Resolve { name, isolation },
            Target::Addr(_) => Plan::Refuse(SocksStatus::ADDRTYPE_NOT_SUPPORTED),
        },
        SocksCmd::RESOLVE_PTR => match target {
            Target::Addr(ip) => Plan::ResolvePtr { ip, isolation },
            Target::Name(_) => Plan::Refuse(SocksStatus::ADDRTYPE_NOT_SUPPORTED),
        },
        _ => Plan::Refuse(SocksStatus::COMMAND_NOT_SUPPORTED),
    }
}

pub struct SocksPort {
    pub ctx: Arc<PortContext>,
    /// Clients still in their handshake ([`crate::load::Budget::handshakes`]).
    pub handshakes: Arc<Semaphore>,
    /// What one local user (or remote address) may hold of them.
    pub handshake_shares: Arc<Shares<Owner>>,
}

impl SocksPort {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Result<()> {
        let ctx = self.ctx.clone();
        let handshakes = self.handshakes.clone();
        ctx.serve(listener, "SOCKS", handshakes, move |client, peer, handshake_slot| {
            let this = self.clone();
            async move {
                let owner = Owner::of(peer, client.local_addr()?);
                let Some(share) = this.handshake_shares.try_take(&owner) else {
                    LoadStats::count(&this.ctx.load.refused_share);
                    bail!("refused: {owner:?} holds its whole share of the SOCKS handshake slots");
                };
                this.handle(client, owner, (handshake_slot, share)).await
            }
        })
        .await
    }

    /// A client is admitted by a handshake slot; once its request is read, it needs a
    /// stream slot and a place in its key's share like any stream, and gives the handshake
    /// slot back. So clients that connect and say nothing can take only handshake slots,
    /// never the streams of others.
    async fn handle(
        &self,
        mut client: TcpStream,
        owner: Owner,
        handshake_slot: (OwnedSemaphorePermit, Share<Owner>),
    ) -> Result<()> {
        let Ok(handshake) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut client)).await else {
            LoadStats::count(&self.ctx.load.idle_closed);
            bail!("SOCKS handshake not finished within {HANDSHAKE_TIMEOUT:?}");
        };
        let (req, early_data) = handshake?;
        if !early_data.is_empty() {
            // Data before our reply: the client did not wait for the handshake to finish.
            let _ = client.write_all(&req.reply(SocksStatus::GENERAL_FAILURE, None)?).await;
            bail!("client sent data before the SOCKS reply");
        }
        let plan = plan(&req, &self.ctx.automap, owner);
        let reply_with = |status: SocksStatus, addr: Option<SocksAddr>| req.reply(status, addr.as_ref());
        let slots = plan.isolation().map(|k| Ok::<_, anyhow::Error>((self.ctx.stream_slot()?, self.ctx.share(k)?)));
        let _slots = match slots.transpose() {
            Ok(s) => s,
            Err(e) => {
                let _ = client.write_all(&reply_with(SocksStatus::GENERAL_FAILURE, None)?).await;
                return Err(e);
            }
        };
        drop(handshake_slot);
        match plan {
            Plan::Refuse(status) => {
                client.write_all(&reply_with(status, None)?).await?;
                Ok(())
            }
            Plan::Resolve { name, isolation } => {
                let mut prefs = StreamPrefs::new();
                prefs.set_isolation(self.ctx.isolation.token(isolation));
                match self.ctx.tor.resolve_with_prefs(&name, &prefs).await {
                    Ok(ips) if !ips.is_empty() => {
                        client.write_all(&reply_with(SocksStatus::SUCCEEDED, Some(SocksAddr::Ip(ips[0])))?).await?
                    }
                    Ok(_) | Err(_) => client.write_all(&reply_with(SocksStatus::HOST_UNREACHABLE, None)?).await?,
                }
                Ok(())
            }
            Plan::ResolvePtr { ip, isolation } => {
                let mut prefs = StreamPrefs::new();
                prefs.set_isolation(self.ctx.isolation.token(isolation));
                let name =
                    self.ctx.tor.resolve_ptr_with_prefs(ip, &prefs).await.ok().and_then(|v| v.into_iter().next());
                match name.map(tor_socksproto::SocksHostname::try_from) {
                    Some(Ok(h)) => {
                        client.write_all(&reply_with(SocksStatus::SUCCEEDED, Some(SocksAddr::Hostname(h)))?).await?
                    }
                    _ => client.write_all(&reply_with(SocksStatus::HOST_UNREACHABLE, None)?).await?,
                }
                Ok(())
            }
            Plan::Connect { target, port, isolation } => {
                let label = isolation_label(&isolation);
                match self.ctx.open(&target, port, isolation).await {
                    Ok((destination, tor_stream)) => {
                        client.write_all(&reply_with(SocksStatus::SUCCEEDED, None)?).await?;
                        self.ctx.track_and_relay(client, tor_stream, destination, label).await
                    }
                    Err((destination, e)) => {
                        let _ = client.write_all(&reply_with(status_for(&e), None)?).await;
                        Err(anyhow::Error::new(e).context(crate::transport::stream_failed(&destination)))
                    }
                }
            }
        }
    }
}

/// Runs the SOCKS handshake on the socket; returns the request and any bytes the client
/// sent after it.
async fn handshake(s: &mut TcpStream) -> Result<(SocksRequest, Vec<u8>)> {
    let mut hs = SocksProxyHandshake::new();
    let mut buf = tor_socksproto::Buffer::new();
    loop {
        match hs.step(&mut buf).context("SOCKS protocol error")? {
            NextStep::Send(data) => s.write_all(&data).await?,
            NextStep::Recv(mut recv) => {
                let n = s.read(recv.buf()).await?;
                if n == 0 {
                    bail!("client closed during the SOCKS handshake");
                }
                recv.note_received(n).context("SOCKS protocol error")?;
            }
            NextStep::Finished(done) => return Ok(done.into_output_and_vec()),
        }
    }
}

fn isolation_label(k: &IsolationKey) -> String {
    match k {
        IsolationKey::Socks { user, .. } if user.is_empty() => "socks".into(),
        IsolationKey::Socks { user, .. } => format!("socks user {}", String::from_utf8_lossy(user)),
        IsolationKey::Local { uid, cgroup } => format!("uid {uid} cgroup {cgroup}"),
        IsolationKey::Gateway { client } => format!("gateway client {client}"),
    }
}

/// The SOCKS status that best says why Arti could not open a stream.
fn status_for(e: &arti_client::Error) -> SocksStatus {
    use arti_client::{ErrorKind as K, HasKind};
    match e.kind() {
        K::RemoteHostNotFound | K::OnionServiceNotFound => SocksStatus::HOST_UNREACHABLE,
        K::RemoteConnectionRefused => SocksStatus::CONNECTION_REFUSED,
        K::RemoteNetworkTimeout | K::TorNetworkTimeout => SocksStatus::TTL_EXPIRED,
        K::ExitPolicyRejected | K::ForbiddenStreamTarget => SocksStatus::NOT_ALLOWED,
        _ => SocksStatus::GENERAL_FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn request(bytes: &[u8]) -> SocksRequest {
        let mut hs = SocksProxyHandshake::new();
        let mut buf = tor_socksproto::Buffer::new();
        let mut input = bytes.to_vec();
        loop {
            match hs.step(&mut buf).unwrap() {
                NextStep::Send(_) => {}
                NextStep::Recv(mut r) => {
                    let n = input.len().min(r.buf().len());
                    assert!(n > 0, "handshake wants more input");
                    r.buf()[..n].copy_from_slice(&input[..n]);
                    input.drain(..n);
                    r.note_received(n).unwrap();
                }
                NextStep::Finished(f) => return f.into_output_and_vec().0,
            }
        }
    }

    const ME: Owner = Owner::Uid(1000);

    fn automap() -> Mutex<Automap> {
        Mutex::new(Automap::new("10.192.0.0/10".parse().unwrap(), 16, Duration::from_secs(60)))
    }

    #[test]
    fn socks5_connect_by_name_with_password_isolation() {
        // greeting (user/pass), auth "alice"/"pw", CONNECT example.com:443
        let mut b = vec![5, 1, 2, 1, 5];
        b.extend_from_slice(b"alice");
        b.extend_from_slice(&[2]);
        b.extend_from_slice(b"pw");
        b.extend_from_slice(&[5, 1, 0, 3, 11]);
        b.extend_from_slice(b"example.com");
        b.extend_from_slice(&443u16.to_be_bytes());
        let plan = plan(&request(&b), &automap(), ME);
        assert_eq!(
            plan,
            Plan::Connect {
                target: Target::Name("example.com".into()),
                port: 443,
                isolation: IsolationKey::Socks { user: b"alice".to_vec(), pass: b"pw".to_vec() }
            }
        );
    }

    #[test]
    fn socks4a_resolve_and_unsupported_commands() {
        // SOCKS4a CONNECT to a name: 0.0.0.1 then the name after the user id.
        let mut b = vec![4, 1, 0, 80, 0, 0, 0, 1];
        b.extend_from_slice(b"bob\0example.org\0");
        assert!(
            matches!(plan(&request(&b), &automap(), ME), Plan::Connect { target: Target::Name(n), port: 80, .. } if n == "example.org")
        );
        // SOCKS5 RESOLVE (0xF0) of a name, no auth.
        let mut r = vec![5, 1, 0, 5, 0xF0, 0, 3, 8];
        r.extend_from_slice(b"tor.test");
        r.extend_from_slice(&0u16.to_be_bytes());
        assert!(matches!(plan(&request(&r), &automap(), ME), Plan::Resolve { name, .. } if name == "tor.test"));
        // BIND is refused by the handshake itself (the connection is closed).
        let bind = [5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80];
        let mut hs = SocksProxyHandshake::new();
        let mut buf = tor_socksproto::Buffer::new();
        let refused = (0..4).any(|_| match hs.step(&mut buf) {
            Ok(NextStep::Recv(mut r)) => {
                let n = bind.len().min(r.buf().len());
                r.buf()[..n].copy_from_slice(&bind[..n]);
                r.note_received(n).is_err()
            }
            Ok(_) => false,
            Err(_) => true,
        });
        assert!(refused, "BIND must not be accepted");
    }

    #[test]
    fn virtual_addresses_become_names_again_for_their_owner_only() {
        let map = automap();
        let ip = map.lock().unwrap().map(ME, "abc.onion", Instant::now());
        let o = ip.octets();
        let b = [5, 1, 0, 5, 1, 0, 1, o[0], o[1], o[2], o[3], 0, 80];
        assert!(
            matches!(plan(&request(&b), &map, ME), Plan::Connect { target: Target::Name(n), .. } if n == "abc.onion")
        );
        // Another user cannot reach (or probe for) it by its address.
        assert_eq!(plan(&request(&b), &map, Owner::Uid(1001)), Plan::Refuse(SocksStatus::HOST_UNREACHABLE));
    }

    #[test]
    fn an_unmapped_virtual_address_is_refused_not_connected() {
        let b = [5, 1, 0, 5, 1, 0, 1, 10, 192, 0, 99, 0, 80];
        assert_eq!(plan(&request(&b), &automap(), ME), Plan::Refuse(SocksStatus::HOST_UNREACHABLE));
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        let mut x: u32 = 7;
        for _ in 0..2000 {
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let mut hs = SocksProxyHandshake::new();
            let mut buf = tor_socksproto::Buffer::new();
            let mut input = bytes.clone();
            for _ in 0..8 {
                match hs.step(&mut buf) {
                    Ok(NextStep::Recv(mut r)) if !input.is_empty() => {
                        let n = input.len().min(r.buf().len());
                        r.buf()[..n].copy_from_slice(&input[..n]);
                        input.drain(..n);
                        if r.note_received(n).is_err() {
                            break;
                        }
                    }
                    Ok(NextStep::Send(_)) => {}
                    _ => break,
                }
            }
        }
    }
}
