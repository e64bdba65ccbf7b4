//! The tunnel: WireGuard (on the wire, so any WireGuard client is a peer) whose peers reach the internet only
//! through Tor (issue 5). The protocol core, with no I/O, is the `ttp-tunnel` crate
//! (re-exported here under the same module names); this module adds what does I/O or
//! reads files: [`config`] (one side of a tunnel as TOML) and [`device`] (the TUN, the UDP
//! socket, rtnetlink for addresses and routes), [`tun`] (the TUN and its offloads). The gateway side also runs inside the
//! daemon (`ttp start --tunnel`), where `crate::gateway` and the TC program `tc_gateway`
//! send its peers' traffic into Tor.

pub use ttp_tunnel::{
    allowed, cookie, handshake, keys, messages, packet, peer, protocol, ratelimit, replay, session, timers,
};

pub mod config;
pub mod device;
pub mod gso;
pub mod onboard;
pub mod tun;
pub mod wgquick;
