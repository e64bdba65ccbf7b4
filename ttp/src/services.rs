//! The running services, as the daemon starts them and the control socket serves them.
//!
//! Its own module so that both depend on it, and neither on the other: the daemon builds
//! the [`Services`] and hands them to [`crate::control::Control`].

use std::sync::{Arc, Mutex};

use crate::{
    dns::{Automap, DnsService},
    tor::{self, Isolation},
    transport::Streams,
    tunnel,
};

/// The running services, for the control socket and status.
pub struct Services {
    pub tor: tor::Tor,
    pub isolation: Arc<Isolation>,
    pub streams: Arc<Streams>,
    pub automap: Arc<Mutex<Automap>>,
    pub dns: Arc<DnsService>,
    /// The last successful exit check.
    pub exit: Mutex<Option<crate::control::proto::CheckResult>>,
    /// The tunnel gateway, if this daemon runs one.
    pub tunnel: Option<tunnel::device::Device>,
}
