//! `cargo xtask bench tunnel-core`: the tunnel's protocol core, CPU only, one core, side by
//! side with boringtun's (`boringtun::noise::Tunn`, the library under boringtun-cli):
//! complete handshakes per second (initiation, response, first data packet), and sealing
//! plus opening 1400-byte packets. No sockets, no TUN: what the protocol costs, not the
//! device (the iperf3 comparison needs the device, which does not exist yet).
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use boringtun::{
    noise::{Tunn, TunnResult},
    x25519,
};
use ttp_tunnel::{
    handshake::{initiate, respond, Identity, PeerKeys},
    messages::{parse, Message},
};

const HANDSHAKES: u32 = 2000;
const PACKETS: u32 = 200_000;
const PACKET: usize = 1400;
const ROUNDS: usize = 3;

fn main() -> Result<()> {
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![("ttp", vec![], vec![]), ("boringtun 0.7.1", vec![], vec![])];
    for round in 0..ROUNDS {
        rows[0].1.push(ttp_handshakes()?);
        rows[1].1.push(bt_handshakes());
        rows[0].2.push(ttp_data()?);
        rows[1].2.push(bt_data());
        eprintln!(
            "round {round}: handshakes/s ttp {:.0} boringtun {:.0}; Gbit/s ttp {:.2} boringtun {:.2}",
            rows[0].1[round], rows[1].1[round], rows[0].2[round], rows[1].2[round]
        );
    }
    println!("| core, one thread (median of {ROUNDS}) | handshakes/s | seal + open, 1400-byte packets, Gbit/s |");
    println!("|---|---|---|");
    for (name, hs, gb) in &rows {
        println!("| {name} | {:.0} | {:.2} |", median(hs), median(gb));
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn per_sec(n: u32, t: Duration) -> f64 {
    f64::from(n) / t.as_secs_f64()
}

fn ttp_pair() -> Result<(Identity, Identity)> {
    Ok((Identity::generate()?, Identity::generate()?))
}

fn ttp_handshakes() -> Result<f64> {
    let (a, b) = ttp_pair()?;
    let keys_b = PeerKeys { public: b.public, psk: Some([1; 32]) };
    let keys_a = PeerKeys { public: a.public, psk: Some([1; 32]) };
    let t0 = Instant::now();
    for i in 0..HANDSHAKES {
        let wall = SystemTime::now() + Duration::from_nanos(u64::from(i));
        let (init, msg) = initiate(&a, &keys_b, i, wall)?;
        let Ok(Message::Initiation(m)) = parse(&msg) else { anyhow::bail!("initiation") };
        let acc = respond(&b, &m, i, |_| Some((keys_a.clone(), None)))?;
        let Ok(Message::Response(r)) = parse(&acc.response) else { anyhow::bail!("response") };
        let mut sa = init.finish(&a, &r).map_err(|r| r.error)?;
        let mut sb = acc.session;
        let d = sa.seal(&[], 0)?;
        let Ok(Message::Data(d)) = parse(&d) else { anyhow::bail!("data") };
        sb.open(&d)?;
    }
    Ok(per_sec(HANDSHAKES, t0.elapsed()))
}

fn ttp_data() -> Result<f64> {
    let (a, b) = ttp_pair()?;
    let (init, msg) = initiate(&a, &PeerKeys { public: b.public, psk: None }, 1, SystemTime::now())?;
    let Ok(Message::Initiation(m)) = parse(&msg) else { anyhow::bail!("initiation") };
    let acc = respond(&b, &m, 2, |_| Some((PeerKeys { public: a.public, psk: None }, None)))?;
    let Ok(Message::Response(r)) = parse(&acc.response) else { anyhow::bail!("response") };
    let (mut sa, mut sb) = (init.finish(&a, &r).map_err(|r| r.error)?, acc.session);
    let packet = vec![0x45u8; PACKET];
    let t0 = Instant::now();
    for _ in 0..PACKETS {
        let d = sa.seal(&packet, 0)?;
        let Ok(Message::Data(d)) = parse(&d) else { anyhow::bail!("data") };
        let p = sb.open(&d)?;
        std::hint::black_box(p);
    }
    Ok(gbits(t0.elapsed()))
}

fn gbits(t: Duration) -> f64 {
    f64::from(PACKETS) * PACKET as f64 * 8.0 / t.as_secs_f64() / 1e9
}

fn bt_pair(i: u32) -> (Tunn, Tunn) {
    let key = || x25519::StaticSecret::from(Identity::generate().expect("key").private);
    let (ka, kb) = (key(), key());
    let (pa, pb) = (x25519::PublicKey::from(&ka), x25519::PublicKey::from(&kb));
    let a = Tunn::new(ka, pb, Some([1; 32]), None, i * 2, None);
    let b = Tunn::new(kb, pa, Some([1; 32]), None, i * 2 + 1, None);
    (a, b)
}

/// One complete boringtun handshake; returns the two tunnels, ready for data.
fn bt_handshake(i: u32) -> (Tunn, Tunn) {
    let (mut a, mut b) = bt_pair(i);
    let (mut buf1, mut buf2, mut buf3) = (vec![0u8; 2048], vec![0u8; 2048], vec![0u8; 2048]);
    let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut buf1, false) else { panic!("init") };
    let TunnResult::WriteToNetwork(resp) = b.decapsulate(None, init, &mut buf2) else { panic!("resp") };
    // The initiator answers the response with a keepalive: the first data packet.
    let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, resp, &mut buf3) else { panic!("keepalive") };
    let mut out = vec![0u8; 2048];
    let _ = b.decapsulate(None, keepalive, &mut out);
    (a, b)
}

fn bt_handshakes() -> f64 {
    let t0 = Instant::now();
    for i in 0..HANDSHAKES {
        std::hint::black_box(bt_handshake(i));
    }
    per_sec(HANDSHAKES, t0.elapsed())
}

fn bt_data() -> f64 {
    let (mut a, mut b) = bt_handshake(0);
    // A valid IPv4 header, so boringtun's decapsulate accepts the packet.
    let mut packet = vec![0u8; PACKET];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(PACKET as u16).to_be_bytes());
    packet[9] = 17;
    packet[12..16].copy_from_slice(&[10, 0, 0, 2]);
    packet[16..20].copy_from_slice(&[10, 0, 0, 1]);
    let (mut wire, mut plain) = (vec![0u8; PACKET + 64], vec![0u8; PACKET + 64]);
    let t0 = Instant::now();
    for _ in 0..PACKETS {
        let TunnResult::WriteToNetwork(d) = a.encapsulate(&packet, &mut wire) else { panic!("encapsulate") };
        let len = d.len();
        match b.decapsulate(None, &wire[..len], &mut plain) {
            TunnResult::WriteToTunnelV4(p, _) => {
                std::hint::black_box(p);
            }
            _ => panic!("decapsulate"),
        }
    }
    gbits(t0.elapsed())
}
