//! Following rtnetlink's announcements on a thread of the monitor.
//!
//! The monitor reacts to network changes in more than one way (new uplinks get the
//! kill-switch, Tor's connections from dead addresses are closed); each follower is the
//! same loop: subscribe, then run a check on every announcement. The announcements are
//! only a cue: each check reads the current state itself, so a missed or merged
//! announcement costs nothing but a moment.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rtnetlink::MulticastGroup;

/// Runs `on_change` once after subscribing to `groups` and after every announcement, until
/// the process ends. Blocking: run it on a thread of its own. Should rtnetlink fail, logs
/// `lost` (what no longer happens) and returns: the host stays as protected as it was.
pub fn follow(groups: &[MulticastGroup], lost: &str, mut on_change: impl FnMut()) {
    let run = async {
        let (conn, _handle, mut changes) =
            rtnetlink::new_multicast_connection(groups).context("opening rtnetlink for network changes")?;
        tokio::spawn(conn);
        // Once after subscribing, so that a change since the start is not missed.
        on_change();
        while changes.next().await.is_some() {
            on_change();
        }
        bail!("rtnetlink closed")
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result: Result<()> = rt.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run));
    if let Err(e) = result {
        tracing::error!("{lost}: {e:#}");
    }
}
