//! `ttp streams`: the daemon's open streams (and with `--recent` the last closed ones):
//! where each goes, whose it is, on which circuit.

use std::path::Path;

use anyhow::Result;
use ttp::control::client::Client;

pub fn run(runtime_dir: &Path, recent: bool, json: bool) -> Result<()> {
    let streams = Client::new(runtime_dir).streams(recent)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&streams)?);
    } else {
        println!(
            "{:<5} {:<34} {:<24} {:<10} {:>6} {:>10} {:>10}",
            "id", "destination", "isolation", "circuit", "age", "up", "down"
        );
        for s in &streams {
            say!(
                "{:<5} {:<34} {:<24} {:<10} {:>5}s {:>10} {:>10}{}",
                s.id,
                s.destination,
                s.isolation,
                s.circuit,
                s.age_secs,
                s.bytes_up,
                s.bytes_down,
                if s.open { "" } else { "  (closed)" }
            );
        }
    }
    Ok(())
}

/// Streams through the TransPort: destination, isolation, circuit, age, bytes.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: super::Paths,
    /// Also the most recent closed streams.
    #[arg(long)]
    pub recent: bool,
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Through the control socket: root or the `ttp` group.
    pub const NEEDS_ROOT: bool = false;

    pub fn run(self) -> Result<()> {
        run(&self.paths.runtime_dir, self.recent, self.json)
    }
}
