//! `testnet run DIR`: brings up the private Tor network in DIR and holds it until SIGTERM
//! or SIGINT. Prints `READY` with the network's details. `cargo xtask testnet up` runs it
//! detached; the integration tests start their own network in-process instead.
use std::path::PathBuf;

use anyhow::{bail, Result};
use ttp_tests::testnet::Testnet;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, dir] = args.as_slice() else { bail!("usage: testnet run DIR") };
    if cmd != "run" {
        bail!("usage: testnet run DIR");
    }
    let net = Testnet::start(&PathBuf::from(dir))?;
    println!("consensus after {:.1} s; {} relays; onion service {}", net.consensus_after, net.relays.len(), net.onion);
    println!("namespace {}; Arti configuration {}", net.netns, net.arti_toml().display());
    println!("READY");
    // SIGTERM/SIGINT end the process; every relay was spawned with PR_SET_PDEATHSIG and
    // its namespace is held by one of them, so the whole network goes with it.
    loop {
        std::thread::park();
    }
}
