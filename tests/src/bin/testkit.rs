//! Small network clients and servers for the end-to-end tests, each reporting exactly what
//! happened (the peer's reply, or the errno) on one line, so tests assert on behaviour.
//!
//! testkit serve-tcp ADDR...      accept forever, answer "DIRECT <local addr>"
//! testkit serve-udp ADDR...      answer each datagram with "DIRECT <local addr>"
//! testkit serve-dns ADDR IPV4 [IPV6]  answer every A query with IPV4 (and AAAA with IPV6):
//!                                a resolver for exits
//! testkit connect ADDR           TCP connect, print the first line received
//! testkit udp ADDR               send one datagram, print the reply or SENT
//! testkit udp-send ADDR HEX       send one datagram with these bytes, print SENT
//! testkit handshake-flood PUBKEY ADDR SECS  tunnel handshake initiations with a valid
//!                                mac1 for PUBKEY, from spoofed sources in 198.18.0.0/15
//!                                (raw IPv4), about 2,000 a second; print SENT n
//! testkit icmp ADDR              one ICMP echo from a raw socket
//! testkit raw ADDR               one packet of IP protocol 253 (experimental) from a raw socket
//! testkit peername ADDR          TCP connect, print getpeername()
//! testkit packet IFACE SRC DST:PORT [MODE]  one IPv4/UDP frame from an AF_PACKET socket;
//!                                MODE: dgram (default), raw-as-arp (SOCK_RAW, the socket and
//!                                sll_protocol say ARP, the frame's own type is IPv4), and
//!                                either with -bypass (PACKET_QDISC_BYPASS: skips TC egress)
//! testkit packet-when FILE IFACE SRC DST:PORT MODE  open the socket now, send once FILE
//!                                exists (prints OPENED, then SENT)
//! testkit dns-flood ADDR N       N malformed DNS datagrams (random, truncated, bit-flipped)
//! testkit tcp-garbage ADDR N     N connections each sending random bytes, then closing
//! testkit serve-hold ADDR        answer "HELD", keep the connection until the client closes
//! testkit serve-check ADDR       HTTP: answer every GET like the Tor check API, with the peer's address
//! testkit hold ADDR N SECS       open N connections, read one line from each, hold SECS
//! testkit keep-sending ADDR      TCP connect, read one line, print CONNECTED <local port>,
//!                                then send a line every 100 ms until the socket fails:
//!                                print CLOSED <errno> (60 s at most)
//! testkit hold-open ADDR N SECS  open N connections as fast as it can (reading nothing),
//!                                print "n opened, m failed" and OPENED, hold them SECS
//! testkit dns-rate ADDR N UNIQUE  N sequential A queries; UNIQUE=1 asks a new name each time
use std::{
    io::{BufRead, BufReader, ErrorKind},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn err(e: std::io::Error) -> ExitCode {
    match e.raw_os_error() {
        Some(n) => println!("ERR {:?}", nix::errno::Errno::from_raw(n)),
        None if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => println!("ERR TIMEOUT"),
        None => println!("ERR {e}"),
    }
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args.split_first().expect("usage: testkit CMD ARGS");
    let addr = || -> SocketAddr { rest[0].parse().expect("socket address") };
    let r = match cmd.as_str() {
        "serve-tcp" => serve_tcp(rest),
        "serve-udp" => serve_udp(rest),
        "serve-dns" => serve_dns(
            &rest[0],
            rest[1].parse().expect("IPv4 answer"),
            rest.get(2).map(|a| a.parse().expect("IPv6 answer")),
        ),
        "connect" | "peername" => connect(addr(), cmd == "peername"),
        "udp" => udp(addr()),
        "udp-send" => udp_send(addr(), &rest[1]),
        "handshake-flood" => handshake_flood(&rest[0], rest[1].parse().expect("ADDR"), rest[2].parse().expect("SECS")),
        "icmp" => raw(addr(), libc::IPPROTO_ICMP),
        "raw" => raw(addr(), 253),
        "serve-hold" => serve_hold(&rest[0]),
        "serve-check" => serve_check(&rest[0]),
        "hold" => hold(addr(), rest[1].parse().expect("count"), rest[2].parse().expect("seconds")),
        "keep-sending" => keep_sending(addr()),
        "hold-open" => hold_open(addr(), rest[1].parse().expect("count"), rest[2].parse().expect("seconds")),
        "dns-rate" => dns_rate(addr(), rest[1].parse().expect("count"), rest[2] == "1"),
        "tcp-garbage" => tcp_garbage(addr(), rest[1].parse().expect("count")),
        "dns-flood" => dns_flood(addr(), rest[1].parse().expect("count")),
        "packet" => packet(
            &rest[0],
            rest[1].parse().expect("source IPv4"),
            rest[2].parse().expect("dest"),
            rest.get(3).map_or("dgram", String::as_str),
            None,
        ),
        "packet-when" => packet(
            &rest[1],
            rest[2].parse().expect("source IPv4"),
            rest[3].parse().expect("dest"),
            &rest[4],
            Some(std::path::Path::new(&rest[0])),
        ),
        _ => panic!("unknown command {cmd}"),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => err(e),
    }
}

fn serve_tcp(addrs: &[String]) -> std::io::Result<()> {
    let mut handles = Vec::new();
    for a in addrs {
        let l = TcpListener::bind(a.as_str())?;
        handles.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                use std::io::Write;
                let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let _ = writeln!(&s, "DIRECT {local}");
            }
        }));
    }
    println!("LISTENING");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn serve_udp(addrs: &[String]) -> std::io::Result<()> {
    let mut handles = Vec::new();
    for a in addrs {
        let s = UdpSocket::bind(a.as_str())?;
        handles.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = s.recv_from(&mut buf) {
                let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let _ = s.send_to(format!("DIRECT {local}").as_bytes(), peer);
            }
        }));
    }
    println!("LISTENING");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn serve_dns(addr: &str, answer: std::net::Ipv4Addr, answer6: Option<std::net::Ipv6Addr>) -> std::io::Result<()> {
    let s = UdpSocket::bind(addr)?;
    println!("LISTENING");
    let mut buf = [0u8; 4096];
    loop {
        let (n, peer) = s.recv_from(&mut buf)?;
        if let Some(r) = ttp_tests::dns_answer(&buf[..n], answer, answer6) {
            let _ = s.send_to(&r, peer);
        }
    }
}

/// Answers each connection on a thread of its own, and waits at most [`TIMEOUT`] for its
/// request: a stream an exit opened and whose client never sent (a test's daemon killed
/// mid-check, its namespace gone, so the exit learns it only much later) must not stall
/// the checks of every test after it. CI failed on that: one silent connection, and
/// every later `ttp check` found no answer.
fn serve_check(addr: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let l = TcpListener::bind(addr)?;
    println!("LISTENING");
    for mut s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(TIMEOUT));
            let mut req = Vec::new();
            let mut buf = [0u8; 2048];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let peer = s.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
            let body = format!("{{\"IsTor\":true,\"IP\":\"{peer}\"}}");
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
    }
    Ok(())
}

fn serve_hold(addr: &str) -> std::io::Result<()> {
    use std::io::Write;
    let l = TcpListener::bind(addr)?;
    println!("LISTENING");
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = s;
            let _ = s.write_all(b"HELD\n");
            let mut buf = [0u8; 64];
            while matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {}
        });
    }
    Ok(())
}

fn hold(addr: SocketAddr, n: usize, secs: u64) -> std::io::Result<()> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        held.push(s);
    }
    println!("HOLDING {}", held.len());
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}

/// A long-lived connection that keeps talking (a chat client, an SSH session).
fn keep_sending(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    println!("CONNECTED {}", s.local_addr()?.port());
    std::io::stdout().flush()?;
    for _ in 0..600 {
        if let Err(e) = s.write_all(b"tick\n") {
            println!("CLOSED {:?}", e.raw_os_error().map(nix::errno::Errno::from_raw));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("STILL OPEN");
    Ok(())
}

/// What a program with many connections does (a BitTorrent client, a browser with many
/// tabs): opens them all and keeps them. Failures are counted, not fatal.
fn hold_open(addr: SocketAddr, n: usize, secs: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    println!("{} opened, {failed} failed", held.len());
    println!("OPENED");
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}

/// Sequential A queries; prints answers per second.
fn dns_rate(server: SocketAddr, n: usize, unique: bool) -> std::io::Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut buf = [0u8; 1500];
    let t0 = std::time::Instant::now();
    let mut answered = 0;
    for i in 0..n {
        let name =
            if unique { format!("n{i}-{}.example.test", std::process::id()) } else { "cached.example.test".into() };
        let mut q = vec![(i >> 8) as u8, i as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        s.send_to(&q, server)?;
        if let Ok((m, _)) = s.recv_from(&mut buf) {
            if m > 12 && buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) > 0 {
                answered += 1;
            }
        }
    }
    println!("{:.0} {answered}", answered as f64 / t0.elapsed().as_secs_f64());
    Ok(())
}

fn tcp_garbage(addr: SocketAddr, n: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        // Half start like a real SOCKS5 greeting, half pure noise.
        let mut bytes: Vec<u8> = if i % 2 == 0 { vec![5, 1, 0] } else { Vec::new() };
        for _ in 0..(x % 300) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(x as u8);
        }
        let _ = s.write_all(&bytes);
    }
    println!("SENT {n}");
    Ok(())
}

fn dns_flood(addr: SocketAddr, n: usize) -> std::io::Result<()> {
    let s = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    // A valid query for "example.test A", to mutate.
    let valid: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x01\x00\x01";
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..n {
        let mut pkt = valid.to_vec();
        match i % 4 {
            0 => pkt = (0..(rnd() % 600) as usize).map(|_| rnd() as u8).collect(),
            1 => pkt.truncate((rnd() % pkt.len() as u64) as usize),
            // Claims more questions than it carries. (Not a random bit flip: that mostly
            // makes well-formed queries for other names, a different test.)
            2 => pkt[5] = 2 + (rnd() % 200) as u8,
            _ => pkt[12] = 63, // a label length running past the end
        }
        let _ = s.send_to(&pkt, addr);
    }
    println!("SENT {n}");
    Ok(())
}

fn connect(addr: SocketAddr, peername: bool) -> std::io::Result<()> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    if peername {
        println!("PEER {}", s.peer_addr()?);
        return Ok(());
    }
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    println!("{}", line.trim_end());
    Ok(())
}

fn udp(addr: SocketAddr) -> std::io::Result<()> {
    let s = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    s.set_read_timeout(Some(Duration::from_millis(700)))?;
    s.send_to(b"hello", addr)?;
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => println!("{} FROM {from}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => println!("SENT"),
    }
    Ok(())
}

fn udp_send(addr: SocketAddr, hex: &str) -> std::io::Result<()> {
    let bytes: Vec<u8> =
        (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect();
    let s = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    s.send_to(&bytes, addr)?;
    println!("SENT");
    Ok(())
}

/// Initiations an attacker can make without knowing any peer's key: mac1 only needs the
/// responder's public key. A few are made and sent over and over from ever new sources.
fn handshake_flood(pubkey: &str, to: SocketAddr, secs: u64) -> std::io::Result<()> {
    use ttp::tunnel::{handshake, keys};
    let SocketAddr::V4(to) = to else { panic!("handshake-flood: IPv4 only") };
    let public = keys::decode(pubkey).expect("public key");
    let me = handshake::Identity::generate().expect("identity");
    let msgs: Vec<Vec<u8>> = (0..32)
        .map(|i| {
            let peer = handshake::PeerKeys { public, psk: None };
            handshake::initiate(&me, &peer, i, std::time::SystemTime::now()).expect("initiation").1
        })
        .collect();
    // SAFETY: plain socket syscalls with valid, initialised arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, owned here.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let mut n: u32 = 0;
    while std::time::Instant::now() < end {
        let msg = &msgs[n as usize % msgs.len()];
        let src = std::net::Ipv4Addr::new(198, 18 + ((n >> 16) & 1) as u8, (n >> 8) as u8, n as u8);
        let total = 20 + 8 + msg.len();
        let mut pkt = Vec::with_capacity(total);
        // IPv4 header (the kernel fills in the checksum and, if zero, the id), UDP header
        // with no checksum (allowed over IPv4), payload.
        pkt.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        pkt.extend_from_slice(&src.octets());
        pkt.extend_from_slice(&to.ip().octets());
        pkt.extend_from_slice(&(40000 + (n % 20000) as u16).to_be_bytes());
        pkt.extend_from_slice(&to.port().to_be_bytes());
        pkt.extend_from_slice(&((8 + msg.len()) as u16).to_be_bytes());
        pkt.extend_from_slice(&[0, 0]);
        pkt.extend_from_slice(msg);
        // SAFETY: pkt and dst are valid for the lengths given.
        unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
        }
        n += 1;
        if n.is_multiple_of(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    println!("SENT {n}");
    Ok(())
}

/// Sends one packet from a raw socket (ICMP echo, or protocol 253 "experimental").
fn raw(addr: SocketAddr, proto: i32) -> std::io::Result<()> {
    let SocketAddr::V4(v4) = addr else { panic!("raw: IPv4 only") };
    // SAFETY: plain socket syscalls with valid, initialised arguments.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, proto);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let guard = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        // ICMP echo request, id 0x7474, seq 1, checksum precomputed over this header only.
        let mut pkt = [8u8, 0, 0, 0, 0x74, 0x74, 0, 1];
        let sum = !pkt.chunks(2).fold(0u32, |a, c| a + u16::from_be_bytes([c[0], c[1]]) as u32) as u16;
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            guard.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    println!("SENT");
    Ok(())
}

/// Sends one IPv4/UDP datagram, built by hand, as a broadcast frame from a packet socket:
/// this bypasses the IP stack and every cgroup hook, so only the TC kill-switch can stop it.
fn packet(
    iface: &str,
    src: std::net::Ipv4Addr,
    dst: SocketAddr,
    mode: &str,
    when: Option<&std::path::Path>,
) -> std::io::Result<()> {
    let SocketAddr::V4(dst) = dst else { panic!("packet: IPv4 only") };
    let payload = b"leak";
    let total = (20 + 8 + payload.len()) as u16;
    let mut p = Vec::with_capacity(total as usize);
    p.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.ip().octets());
    let sum = !p.chunks(2).fold(0u32, |a, c| {
        let s = a + u16::from_be_bytes([c[0], c[1]]) as u32;
        (s & 0xffff) + (s >> 16)
    }) as u16;
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
    p.extend_from_slice(payload);
    let raw = mode.starts_with("raw");
    let (kind, proto) = if raw {
        // The socket claims ARP; the frame it writes is IPv4 all the same.
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        frame.extend_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes());
        frame.extend_from_slice(&p);
        p = frame;
        (libc::SOCK_RAW, (libc::ETH_P_ARP as u16).to_be() as i32)
    } else {
        (libc::SOCK_DGRAM, (libc::ETH_P_IP as u16).to_be() as i32)
    };
    let index = nix::net::if_::if_nametoindex(iface).map_err(std::io::Error::from)?;
    // SAFETY: plain socket syscalls with valid, initialised arguments.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, kind, proto);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let guard = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        if mode.ends_with("-bypass") {
            let one: libc::c_int = 1;
            if libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(file) = when {
            println!("OPENED");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            while !file.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let n = libc::sendto(
            guard.as_raw_fd(),
            p.as_ptr().cast(),
            p.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    println!("SENT");
    Ok(())
}
