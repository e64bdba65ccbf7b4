//! Accepting connections so that no load ends a listener.
//!
//! A listener whose task ends is a service that ends, and a service that ends puts the
//! host in lockdown (see [`crate::daemon`]): so a listener must not end for reasons that
//! say nothing about the listener. Under load `accept()` fails for exactly such reasons:
//! the process is out of descriptors (`EMFILE`: one program holding many connections is
//! enough), so is the system (`ENFILE`), memory or socket buffers ran short (`ENOMEM`,
//! `ENOBUFS`), the client gave up while it waited in the backlog (`ECONNABORTED`), a
//! firewall refused it (`EPERM`), a signal interrupted us. Those are counted, waited out
//! briefly and the listener goes on. Only an error that says the listener itself is
//! broken (closed under us, `EINVAL` once it no longer listens, `EBADF`, `ENOTSOCK`)
//! ends it. Arti's `accept_err_is_fatal` draws the same line.

use std::{
    future::Future,
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// How long a listener waits after a transient error. The error usually persists for a
/// while (descriptors are freed when connections close), and the listener's socket stays
/// readable meanwhile: retrying at once would spin a core.
const BACKOFF: Duration = Duration::from_millis(50);

/// Whether an `accept()` error means the listener is broken, rather than that this one
/// connection, or this moment, failed.
pub fn is_fatal(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(e.kind(), Interrupted | WouldBlock | ConnectionAborted | ConnectionReset | ConnectionRefused | TimedOut)
    {
        return false;
    }
    !matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPERM
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Transient accept errors seen, for `ttp status` (and the second of the last one logged).
#[derive(Debug, Default)]
pub struct AcceptErrors(AtomicU64, AtomicU64);

impl AcceptErrors {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Calls `accept` until it yields a connection or fails in a way [`is_fatal`] calls
/// fatal; transient errors are [waited out](wait_out).
pub async fn next<T, F, Fut>(what: &str, errors: &AcceptErrors, mut accept: F) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(t) => return Ok(t),
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => wait_out(what, errors, &e).await,
        }
    }
}

/// Counts a transient error, logs it (the first of each second), and waits [`BACKOFF`].
pub async fn wait_out(what: &str, errors: &AcceptErrors, e: &io::Error) {
    let n = errors.0.fetch_add(1, Ordering::Relaxed) + 1;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if errors.1.swap(now, Ordering::Relaxed) != now {
        tracing::warn!("{what}: {e}; waiting and going on ({n} such errors so far)");
    }
    tokio::time::sleep(BACKOFF).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_and_aborted_clients_are_transient_a_broken_listener_is_not() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::ECONNABORTED, libc::EPERM] {
            assert!(!is_fatal(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
        assert!(!is_fatal(&io::Error::from(io::ErrorKind::Interrupted)));
        for errno in [libc::EINVAL, libc::EBADF, libc::ENOTSOCK] {
            assert!(is_fatal(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
    }

    #[tokio::test]
    async fn transient_errors_are_counted_and_waited_out() {
        let errors = AcceptErrors::default();
        let mut calls = 0;
        let got = next("test", &errors, || {
            calls += 1;
            let r = if calls < 3 { Err(io::Error::from_raw_os_error(libc::EMFILE)) } else { Ok(calls) };
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!((got, errors.get()), (3, 2));
        let fatal = next("test", &errors, || async { Err::<(), _>(io::Error::from_raw_os_error(libc::EINVAL)) }).await;
        assert_eq!(fatal.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
