//! `ttp check`: through Tor, ask a check endpoint whether we look like Tor and which exit
//! address it sees.
//!
//! Endpoints answer like the Tor Project's check API (`{"IsTor":true,"IP":"…"}`) or with a
//! bare address. The request is one HTTP/1.0 GET with a tiny body, written by hand: an HTTP
//! client library would be the largest dependency of ttp for two lines of protocol. TLS
//! comes from async-native-tls, which Arti already uses.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use arti_client::StreamPrefs;
use futures::{AsyncReadExt, AsyncWriteExt};
use serde::Deserialize;

use crate::tor::Tor;

/// Endpoints tried in order when none is configured.
pub const DEFAULT_CHECK_URLS: &[&str] = &["https://check.torproject.org/api/ip"];

const MAX_RESPONSE: usize = 64 * 1024;

/// One try at one endpoint, stream and answer, at most this long: a circuit or an exit
/// that stalls must not hold the check (and `ttp check`, which waits 120 s) forever.
const ATTEMPT: Duration = Duration::from_secs(20);
/// Tries per endpoint, each on a circuit of its own: one stalled circuit is not the
/// endpoint's verdict.
const ATTEMPTS: usize = 2;

pub use crate::control::proto::CheckResult;

/// A parsed `http://` or `https://` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

/// Longest URL taken: a check endpoint needs no more.
const MAX_URL: usize = 2048;

/// Reads a check URL strictly: it goes into a request line and a Host header written by
/// hand, and root's `check` takes it from the control socket. So: http or https only,
/// printable ASCII without spaces (a CR or LF would add headers of the caller's choosing),
/// no credentials, a host of letters, digits, dots and dashes (or an IPv6 literal), a
/// port that is not 0.
pub fn parse_url(url: &str) -> Result<Url> {
    if url.len() > MAX_URL {
        bail!("check URL longer than {MAX_URL} bytes");
    }
    if let Some(c) = url.chars().find(|c| !c.is_ascii_graphic()) {
        bail!("{}: check URLs are printable ASCII without spaces (found {c:?})", url.escape_debug());
    }
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("{url}: check URLs start with http:// or https://");
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if authority.contains('@') {
        bail!("{url}: credentials in a check URL are not supported");
    }
    let default_port = if tls { 443 } else { 80 };
    // `host`, `host:port`, `[v6]`, `[v6]:port`
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !authority.ends_with(']') => (h, p.parse().with_context(|| format!("{url}: bad port"))?),
        _ => (authority, default_port),
    };
    if port == 0 {
        bail!("{url}: port 0");
    }
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let v6 = v6.strip_suffix(']').with_context(|| format!("{url}: unclosed [ in the host"))?;
            v6.parse::<std::net::Ipv6Addr>().with_context(|| format!("{url}: not an IPv6 address in [ ]"))?;
            v6
        }
        None => host,
    };
    if host.is_empty() {
        bail!("{url}: no host");
    }
    if !host.contains(':') && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        bail!("{url}: the host may hold letters, digits, dots and dashes only");
    }
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('/') => p.to_string(),
        p => format!("/{p}"),
    };
    Ok(Url { tls, host: host.to_string(), port, path })
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
    if let Ok(api) = serde_json::from_str::<Api>(body) {
        return Ok((api.is_tor, api.ip));
    }
    let ip =
        body.trim().parse().with_context(|| format!("neither check-API JSON nor an address: {:.80}", body.trim()))?;
    Ok((None, ip))
}

/// One check through Tor, on a circuit of its own.
pub async fn check(tor: &Tor, url: &str) -> Result<CheckResult> {
    let u = parse_url(url)?;
    let t0 = Instant::now();
    let mut prefs = StreamPrefs::new();
    prefs.set_isolation(arti_client::IsolationToken::new());
    let stream = tor
        .connect_with_prefs((u.host.as_str(), u.port), &prefs)
        .await
        .with_context(|| format!("{url}: no stream through Tor"))?;
    let request =
        format!("GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: ttp\r\nConnection: close\r\n\r\n", u.path, u.host);
    let response = if u.tls {
        let mut tls =
            async_native_tls::connect(u.host.as_str(), stream).await.with_context(|| format!("{url}: TLS"))?;
        exchange(&mut tls, &request).await?
    } else {
        let mut s = stream;
        exchange(&mut s, &request).await?
    };
    let latency_ms = t0.elapsed().as_millis() as u64;
    let (is_tor, exit_address) = parse_response(&response).with_context(|| format!("{url}: unexpected answer"))?;
    Ok(CheckResult { url: url.to_string(), is_tor, exit_address, latency_ms, checked_unix: crate::control::unix_now() })
}

/// Reads an endpoint's whole HTTP response (at most [`MAX_RESPONSE`] bytes, from whoever
/// runs the endpoint, or the exit): a 2xx status, then the verdict from the body.
pub fn parse_response(response: &[u8]) -> Result<(Option<bool>, IpAddr)> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2')) {
        bail!("{:.80}", status.escape_debug());
    }
    parse_body(body)
}

async fn exchange<S: futures::AsyncRead + futures::AsyncWrite + Unpin>(s: &mut S, request: &str) -> Result<Vec<u8>> {
    s.write_all(request.as_bytes()).await?;
    s.flush().await?;
    let mut out = Vec::new();
    s.take(MAX_RESPONSE as u64).read_to_end(&mut out).await?;
    Ok(out)
}

/// Tries each URL in order; the first answer wins. The error lists every failure.
pub async fn check_any(tor: &Tor, urls: &[String]) -> Result<CheckResult> {
    let mut errors = Vec::new();
    for url in urls {
        for _ in 0..ATTEMPTS {
            match tokio::time::timeout(ATTEMPT, check(tor, url)).await {
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
        assert_eq!(
            parse_url("https://check.torproject.org/api/ip").unwrap(),
            Url { tls: true, host: "check.torproject.org".into(), port: 443, path: "/api/ip".into() }
        );
        assert_eq!(
            parse_url("http://203.0.113.10:8080").unwrap(),
            Url { tls: false, host: "203.0.113.10".into(), port: 8080, path: "/".into() }
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:notaport/").is_err());
        assert_eq!(parse_url("http://[2001:db8::1]:8080/x").unwrap().host, "2001:db8::1");
        assert_eq!(parse_url("https://[2001:db8::1]/").unwrap().port, 443);
        assert_eq!(parse_url("http://h.test?x=1").unwrap().path, "/?x=1");
    }

    /// What would change the request written by hand, or is not a place to connect to.
    #[test]
    fn urls_that_could_smuggle_headers_or_credentials_are_refused() {
        for bad in [
            "http://h.test/x\r\nX-Evil: 1",
            "http://h.test/\nx",
            "http://h.test/a b",
            "http://user:pw@h.test/",
            "http://h.test@evil.test/",
            "http://h.te\u{e9}st/",
            "http://h.test:0/",
            "http://h_t.test/",
            "http://[2001:db8::1/",
            "http://[nonsense]/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} was taken");
        }
        assert!(parse_url(&format!("http://h.test/{}", "a".repeat(MAX_URL))).is_err());
    }

    #[test]
    fn responses() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n198.51.100.7\n";
        assert_eq!(parse_response(ok).unwrap(), (None, "198.51.100.7".parse().unwrap()));
        assert!(parse_response(b"HTTP/1.0 503 Busy\r\n\r\n198.51.100.7").is_err());
        assert!(parse_response(b"garbage").is_err());
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
