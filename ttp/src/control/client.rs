//! The control socket's client: one typed client for the CLI, `ttp top` and tests.
//!
//! Requests go one at a time, each answered before the next; a [`Client`] keeps its
//! connection between them (`ttp top` asks every second), and opens a new one when the
//! daemon closed the old one for idling.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::proto::{CheckResult, PeerChange, Reply, Request, Status, StreamSnapshot, TestConnect, SOCKET};

/// How long a request may take by default: a check goes through Tor and may try several
/// endpoints.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to the daemon's control socket.
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    conn: Option<BufReader<UnixStream>>,
}

impl Client {
    /// A client of the daemon whose runtime directory is `runtime_dir`. Connects on the
    /// first request.
    pub fn new(runtime_dir: &Path) -> Client {
        Client { path: runtime_dir.join(SOCKET), timeout: DEFAULT_TIMEOUT, conn: None }
    }

    /// Gives up on a request after `timeout` without its reply.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    fn connect(&self) -> Result<BufReader<UnixStream>> {
        let s = UnixStream::connect(&self.path).with_context(|| {
            format!("cannot reach the daemon at {} (is ttp running? `ttp start`)", self.path.display())
        })?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        Ok(BufReader::new(s))
    }

    /// One request, its reply; a refusal (`{"ok":false,...}`) is an error with the
    /// daemon's words.
    pub fn call(&mut self, req: &Request) -> Result<Reply> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        // A kept connection the daemon closed for idling reads as EOF before any reply:
        // the request was not read, so sending it again on a new one is safe.
        let reused = self.conn.is_some();
        let reply = match self.exchange(&line) {
            Ok(Some(reply)) => reply,
            Ok(None) if reused => {
                self.conn = None;
                self.exchange(&line)?.context("the daemon closed the control connection without a reply")?
            }
            Ok(None) => bail!("the daemon closed the control connection without a reply"),
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        let reply: Reply =
            serde_json::from_str(&reply).with_context(|| format!("unexpected reply from the daemon: {reply}"))?;
        if let Reply::Error { error, .. } = &reply {
            bail!("{error}");
        }
        Ok(reply)
    }

    /// Writes `line` and reads one reply line; `None` at EOF.
    fn exchange(&mut self, line: &[u8]) -> Result<Option<String>> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        if let Err(e) = conn.get_mut().write_all(line) {
            // The daemon closed a kept connection: as EOF, so it is retried once.
            return if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(None) } else { Err(e.into()) };
        }
        let mut reply = String::new();
        match conn.read_line(&mut reply) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(reply)),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => bail!(
                "the daemon did not answer within {}s: it may be stalled (`ttp status`, `ttp logs`; `ttp restart` \
                 keeps the host closed while it restarts)",
                self.timeout.as_secs()
            ),
            Err(e) => Err(e.into()),
        }
    }

    pub fn status(&mut self) -> Result<Status> {
        match self.call(&Request::Status)? {
            Reply::Status { status, .. } => Ok(*status),
            other => unexpected(other),
        }
    }

    /// The open streams, and with `recent` the latest closed ones too.
    pub fn streams(&mut self, recent: bool) -> Result<Vec<StreamSnapshot>> {
        match self.call(&Request::Streams { recent })? {
            Reply::Streams { streams, .. } => Ok(streams),
            other => unexpected(other),
        }
    }

    /// New identity; returns how many isolation keys were reset (root only).
    pub fn refresh(&mut self) -> Result<usize> {
        match self.call(&Request::Refresh)? {
            Reply::Refreshed { isolation_keys_reset, .. } => Ok(isolation_keys_reset),
            other => unexpected(other),
        }
    }

    /// Asks check endpoints through Tor (the daemon's own list when `urls` is empty).
    pub fn check(&mut self, urls: Vec<String>) -> Result<CheckResult> {
        match self.call(&Request::Check { urls })? {
            Reply::Checked { check, .. } => Ok(check),
            other => unexpected(other),
        }
    }

    /// Opens a Tor stream to `host:port` on a fresh circuit and says how it went (root only).
    pub fn test_connect(&mut self, host: &str, port: u16) -> Result<TestConnect> {
        match self.call(&Request::TestConnect { host: host.to_string(), port })? {
            Reply::Connected { connected, .. } => Ok(connected),
            other => unexpected(other),
        }
    }

    /// Adds or removes a tunnel peer (root only).
    pub fn tunnel_peer(&mut self, change: PeerChange) -> Result<()> {
        self.call(&Request::TunnelPeer(change)).map(drop)
    }
}

fn unexpected<T>(reply: Reply) -> Result<T> {
    bail!("unexpected reply from the daemon: {reply:?}")
}

/// One request on a connection of its own, one reply (within [`DEFAULT_TIMEOUT`]).
pub fn request(runtime_dir: &Path, req: &Request) -> Result<Reply> {
    Client::new(runtime_dir).call(req)
}

/// [`request`], giving up after `timeout` without a reply.
pub fn request_within(runtime_dir: &Path, req: &Request, timeout: Duration) -> Result<Reply> {
    Client::new(runtime_dir).with_timeout(timeout).call(req)
}
