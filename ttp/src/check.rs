//! `ttp check`: through Tor, ask a check endpoint whether we look like Tor and which exit
//! address it sees.
//!
//! Endpoints answer like the Tor Project's check API (`{"IsTor":true,"IP":"…"}`) or with a
//! bare address. The request goes with reqwest through the daemon's own SOCKS port
//! (`socks5h`: the name is resolved by the exit, never here), each try under a SOCKS
//! username of its own, which the SOCKS port makes an isolation key of its own: a circuit
//! of its own, so one stalled circuit or exit is not the endpoint's verdict.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub use crate::control::proto::CheckResult;

/// Endpoints tried in order when none is configured: the Tor Project's check API (its
/// verdict and the address), then endpoints that only say the address they see.
pub const DEFAULT_CHECK_URLS: &[&str] =
    &["https://check.torproject.org/api/ip", "https://api.ipify.org", "https://icanhazip.com"];

const MAX_RESPONSE: usize = 64 * 1024;

/// One try at one endpoint, stream and answer, at most this long: a circuit or an exit
/// that stalls must not hold the check (and `ttp check`, which waits 120 s) forever.
const ATTEMPT: Duration = Duration::from_secs(20);
/// Tries per endpoint, each on a circuit of its own: one stalled circuit is not the
/// endpoint's verdict.
const ATTEMPTS: usize = 2;

/// Longest URL taken: a check endpoint needs no more.
const MAX_URL: usize = 2048;

/// Reads a check URL: root's `check` takes it from the control socket, and it names where
/// the daemon connects. So: http or https only, no credentials (they would go to whoever
/// runs the endpoint, and to the exit with http), a host, a port that is not 0.
pub fn parse_url(url: &str) -> Result<reqwest::Url> {
    if url.len() > MAX_URL {
        bail!("check URL longer than {MAX_URL} bytes");
    }
    let u = reqwest::Url::parse(url).with_context(|| format!("{}: not a URL", url.escape_debug()))?;
    if !matches!(u.scheme(), "http" | "https") {
        bail!("{url}: check URLs start with http:// or https://");
    }
    if !u.username().is_empty() || u.password().is_some() {
        bail!("{url}: credentials in a check URL are not supported");
    }
    if u.host_str().is_none_or(str::is_empty) {
        bail!("{url}: no host");
    }
    if u.port() == Some(0) {
        bail!("{url}: port 0");
    }
    Ok(u)
}

/// `--check-url`'s value parser: the URL, if [`parse_url`] takes it.
pub fn check_url(url: &str) -> Result<String> {
    parse_url(url).map(|_| url.to_string())
}

/// Reads the verdict from a response body.
pub fn parse_body(body: &str) -> Result<(Option<bool>, IpAddr)> {
    #[derive(Deserialize)]
    struct Api {
        #[serde(rename = "IsTor")]
        is_tor: Option<bool>,
        #[serde(rename = "IP")]
        ip: IpAddr,
    }
    if let Ok(a) = serde_json::from_str::<Api>(body) {
        return Ok((a.is_tor, a.ip));
    }
    let ip = body
        .trim()
        .parse()
        .with_context(|| format!("neither check-API JSON nor an address: {:.80}", body.escape_debug()))?;
    Ok((None, ip))
}

/// One check through Tor, through the SOCKS port at `socks`, on a circuit of its own.
pub async fn check(socks: SocketAddr, url: &str) -> Result<CheckResult> {
    /// Each try's SOCKS username: a new isolation key, hence a new circuit.
    static TRY: AtomicU64 = AtomicU64::new(0);
    let u = parse_url(url)?;
    let user = format!("ttp-check-{}-{}", std::process::id(), TRY.fetch_add(1, Ordering::Relaxed));
    let proxy = reqwest::Proxy::all(format!("socks5h://{user}:x@{socks}")).context("the SOCKS port as a proxy")?;
    let client = reqwest::Client::builder()
        .proxy(proxy)
        .timeout(ATTEMPT)
        .user_agent("ttp")
        // An answer comes from where it was asked: a redirect could send the daemon
        // anywhere the endpoint (or, with http, the exit) chose.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let t0 = Instant::now();
    let (is_tor, exit_address) = ask(&client, u).await?;
    let latency_ms = t0.elapsed().as_millis() as u64;
    Ok(CheckResult { url: url.to_string(), is_tor, exit_address, latency_ms, checked_unix: crate::control::unix_now() })
}

/// Asks one endpoint, with `client`, which address it sees and whether that is Tor's.
/// `ttp check-leak` asks with a client of its own, as an application would.
pub async fn ask(client: &reqwest::Client, url: reqwest::Url) -> Result<(Option<bool>, IpAddr)> {
    let shown = url.to_string();
    let mut response = client.get(url).send().await.with_context(|| format!("{shown}: no answer"))?;
    if !response.status().is_success() {
        bail!("{shown}: {}", response.status());
    }
    // At most MAX_RESPONSE bytes, from whoever runs the endpoint (or the exit).
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.with_context(|| format!("{shown}: reading the answer"))? {
        body.extend_from_slice(&chunk[..chunk.len().min(MAX_RESPONSE - body.len())]);
        if body.len() >= MAX_RESPONSE {
            break;
        }
    }
    parse_body(&String::from_utf8_lossy(&body)).with_context(|| format!("{shown}: unexpected answer"))
}

/// Tries each URL in order; the first answer wins. The error lists every failure.
pub async fn check_any(socks: SocketAddr, urls: &[String]) -> Result<CheckResult> {
    let mut errors = Vec::new();
    for url in urls {
        for _ in 0..ATTEMPTS {
            match tokio::time::timeout(ATTEMPT, check(socks, url)).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(_) => errors.push(format!("{url}: no answer within {}s", ATTEMPT.as_secs())),
            }
        }
    }
    bail!("no check endpoint answered: {}", errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("https://check.torproject.org/api/ip").unwrap();
        assert_eq!(
            (u.host_str(), u.port_or_known_default(), u.path()),
            (Some("check.torproject.org"), Some(443), "/api/ip")
        );
        let u = parse_url("http://203.0.113.10:8080").unwrap();
        assert_eq!((u.host_str(), u.port(), u.path()), (Some("203.0.113.10"), Some(8080), "/"));
        assert_eq!(parse_url("http://[2001:db8::1]:8080/x").unwrap().host_str(), Some("[2001:db8::1]"));
        assert_eq!(parse_url("http://h.test?x=1").unwrap().query(), Some("x=1"));
    }

    /// Not a place to connect to, or not ours to send: refused with a clear error.
    #[test]
    fn urls_without_a_place_or_with_credentials_are_refused() {
        for bad in [
            "ftp://x",
            "http://:80/",
            "http://h:notaport/",
            "http://user:pw@h.test/",
            "http://h.test@evil.test/",
            "http://h.test:0/",
            "http://[2001:db8::1/",
            "http://[nonsense]/",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} was taken");
        }
        assert!(parse_url(&format!("http://h.test/{}", "a".repeat(MAX_URL))).is_err());
    }

    #[test]
    fn bodies() {
        assert_eq!(
            parse_body(r#"{"IsTor":true,"IP":"192.0.2.5"}"#).unwrap(),
            (Some(true), "192.0.2.5".parse().unwrap())
        );
        assert_eq!(parse_body("198.51.100.7\n").unwrap(), (None, "198.51.100.7".parse().unwrap()));
        assert!(parse_body("<html>hello</html>").is_err());
    }
}
