//! The DNSPort's sockets: UDP and TCP on loopback, around [`DnsService`].

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};

use super::DnsService;

/// Queries in flight at once; past this, UDP queries are dropped (the client retries) and
/// TCP connections wait. Above the service's cap on lookups through Tor, so that slow
/// lookups can never take every slot from answers that need no Tor.
const MAX_IN_FLIGHT: usize = 1024;
const _: () = assert!(MAX_IN_FLIGHT > super::service::MAX_TOR_LOOKUPS);
const TCP_IDLE: Duration = Duration::from_secs(10);

pub async fn serve_udp(sock: UdpSocket, service: Arc<DnsService>) -> Result<()> {
    let sock = Arc::new(sock);
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (sock, service) = (sock.clone(), service.clone());
        tokio::spawn(async move {
            if let Some(answer) = service.handle(&query).await {
                let _ = sock.send_to(&answer, peer).await;
            }
            drop(permit);
        });
    }
}

pub async fn serve_tcp(listener: TcpListener, service: Arc<DnsService>) -> Result<()> {
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let (stream, _) = listener.accept().await?;
        let permit = limit.clone().acquire_owned().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let _ = tcp_session(stream, &service).await;
            drop(permit);
        });
    }
}

/// Length-prefixed queries until the client closes or idles.
async fn tcp_session(mut s: TcpStream, service: &DnsService) -> Result<()> {
    loop {
        let mut len = [0u8; 2];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len)).await??;
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut q)).await??;
        let Some(answer) = service.handle(&q).await else { return Ok(()) };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&(answer.len() as u16).to_be_bytes());
        out.extend_from_slice(&answer);
        s.write_all(&out).await?;
    }
}
