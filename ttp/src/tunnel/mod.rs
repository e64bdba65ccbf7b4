//! The tunnel: a WireGuard-class encrypted UDP tunnel whose peers reach the internet only
//! through Tor (issue 5). Built like boringtun's `noise/`: a protocol core with no I/O
//! (each call returns "send this to the network" or "give this to the TUN"), so that it is
//! tested and fuzzed without sockets, and a device around it that does the batched I/O.
//!
//! So far: [`replay`], the anti-replay window. To come: handshake (Noise IK via snow),
//! session, cookies and rate limiting, timers, the device.

pub mod replay;
