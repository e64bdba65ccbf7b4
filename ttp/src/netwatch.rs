//! Following rtnetlink's announcements on a thread of the monitor.
//!
//! The monitor reacts to network changes in more than one way (new uplinks get the
//! kill-switch, Tor's connections from dead addresses are closed); each follower is the
//! same loop: subscribe, then run a check on every announcement. The announcements are
//! only a cue: each check reads the current state itself, so a missed or merged
//! announcement costs nothing but a moment.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use rtnetlink::MulticastGroup;

/// How long a follower waits before it subscribes again after rtnetlink failed.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// Runs `on_change` once after subscribing to `groups` and after every announcement, until
/// the process ends. Blocking: run it on a thread of its own. A subscription that fails
/// or ends (a netlink socket that overflowed on a busy host, say) is logged with `lost`
/// (what does not happen meanwhile) and made again a moment later; it never gives up,
/// since what it follows (uplinks, gateway interfaces) would otherwise go without the
/// kill-switch until the next start.
pub fn follow(groups: &[MulticastGroup], lost: &str, mut on_change: impl FnMut()) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("{lost}: no runtime for rtnetlink: {e:#}");
            return;
        }
    };
    let subscribe = || {
        let (conn, handle, changes) =
            rtnetlink::new_multicast_connection(groups).context("opening rtnetlink for network changes")?;
        tokio::spawn(conn);
        // The handle stays with the subscription: the connection serves as long as it lives.
        Ok((handle, changes))
    };
    rt.block_on(follow_with(|| Some(subscribe()), lost, &mut on_change, RESUBSCRIBE));
}

/// [`follow`]'s loop, with the subscription made by `subscribe` (the value it keeps
/// alive, and the announcements); it ends only when `subscribe` gives `None`, which
/// rtnetlink's never does.
async fn follow_with<K, S: Stream + Unpin>(
    mut subscribe: impl FnMut() -> Option<Result<(K, S)>>,
    lost: &str,
    on_change: &mut impl FnMut(),
    retry: Duration,
) {
    while let Some(subscribed) = subscribe() {
        match subscribed {
            Ok((_keep, mut changes)) => {
                // Once after subscribing: a change since the start, or while no
                // subscription stood, is caught up.
                on_change();
                while changes.next().await.is_some() {
                    on_change();
                }
                tracing::error!("{lost}: rtnetlink closed; subscribing again in {retry:?}");
            }
            Err(e) => tracing::error!("{lost}: {e:#}; subscribing again in {retry:?}"),
        }
        tokio::time::sleep(retry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscription that ends, or fails, is made again, and each new one catches up
    /// (the monitor's followers gave up at the first end: a new uplink then went without
    /// its TC kill-switch until the next start).
    #[tokio::test]
    async fn a_follower_subscribes_again_after_rtnetlink_ends_or_fails() {
        let mut made = 0;
        let subscribe = || {
            made += 1;
            match made {
                // Two announcements, then the subscription ends.
                1 | 3 => Some(Ok(((), futures::stream::iter([(), ()])))),
                2 => Some(Err(anyhow::anyhow!("netlink socket overflowed"))),
                _ => None,
            }
        };
        let mut changes = 0;
        follow_with(subscribe, "following", &mut || changes += 1, Duration::ZERO).await;
        // Per subscription that stood: once after subscribing, once per announcement.
        assert_eq!(changes, 6);
    }
}
