//! Any bytes from a SOCKS client: the handshake (Arti's) and ttp's reading of the request
//! never panic, and a plan never connects to a virtual address as an address (another
//! user's, or an expired one: both name nothing).
#![no_main]

use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use tor_socksproto::{Buffer, Handshake, NextStep, SocksProxyHandshake};
use ttp::{
    dns::Automap,
    principal::Owner,
    socks::{plan, Plan},
    transport::Target,
};

/// A table with one mapping of uid 1000's, whose address the input may well name.
fn automap() -> &'static (Mutex<Automap>, std::net::Ipv4Addr) {
    static M: OnceLock<(Mutex<Automap>, std::net::Ipv4Addr)> = OnceLock::new();
    M.get_or_init(|| {
        let mut m = Automap::new("10.192.0.0/30".parse().unwrap(), 2, Duration::from_secs(3600));
        let ip = m.map(Owner::Uid(1000), "mine.onion", Instant::now());
        (Mutex::new(m), ip)
    })
}

fuzz_target!(|b: &[u8]| {
    let Some((&who, mut input)) = b.split_first() else { return };
    let owner = if who & 1 == 0 { Owner::Uid(1000) } else { Owner::Uid(1001) };
    let mut hs = SocksProxyHandshake::new();
    let mut buf = Buffer::new();
    for _ in 0..16 {
        match hs.step(&mut buf) {
            Ok(NextStep::Send(_)) => {}
            Ok(NextStep::Recv(mut r)) => {
                let n = input.len().min(r.buf().len());
                if n == 0 {
                    return;
                }
                r.buf()[..n].copy_from_slice(&input[..n]);
                input = &input[n..];
                if r.note_received(n).is_err() {
                    return;
                }
            }
            Ok(NextStep::Finished(f)) => {
                let req = f.into_output_and_vec().0;
                let (map, mine) = automap();
                match plan(&req, map, owner) {
                    Plan::Connect { target: Target::Addr(std::net::IpAddr::V4(ip)), .. } => {
                        assert!(
                            !"10.192.0.0/30".parse::<ipnet::Ipv4Net>().unwrap().contains(&ip),
                            "{ip} connected as an address"
                        );
                    }
                    Plan::Connect { target: Target::Name(n), .. } if n == "mine.onion" => {
                        assert_eq!(owner, Owner::Uid(1000), "another user reached {mine}'s name");
                    }
                    _ => {}
                }
                return;
            }
            Err(_) => return,
        }
    }
});
