//! `ttp check`: through Tor, ask a check endpoint whether we look like Tor and which exit
//! address it sees.
//!
//! Endpoints answer like the Tor Project's check API (`{"IsTor":true,"IP":"…"}`) or with a
//! bare address. The request is one HTTP/1.0 GET with a tiny body, written by hand: an HTTP
//! client library would be the largest dependency of ttp for two lines of protocol. TLS
//! comes from async-native-tls, which Arti already uses.

use std::{net::IpAddr, time::Instant};

use anyhow::{bail, Context, Result};
use arti_client::StreamPrefs;
use futures::{AsyncReadExt, AsyncWriteExt};
use serde::{Deserialize, Serialize};

use crate::tor::Tor;

/// Endpoints tried in order when none is configured.
pub const DEFAULT_CHECK_URLS: &[&str] = &["https://check.torproject.org/api/ip"];

const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    pub url: String,
    /// The endpoint's verdict; `None` when it only reports an address.
    pub is_tor: Option<bool>,
    pub exit_address: IpAddr,
    pub latency_ms: u64,
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Url> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("{url}: check URLs start with http:// or https://");
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let default_port = if tls { 443 } else { 80 };
    // `host`, `host:port`, `[v6]`, `[v6]:port`
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !authority.ends_with(']') => (h, p.parse().with_context(|| format!("{url}: bad port"))?),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{url}: no host");
    }
    Ok(Url { tls, host: host.to_string(), port, path: if path.is_empty() { "/".into() } else { path.into() } })
}

/// Reads the verdict from a response body.
fn parse_body(body: &str) -> Result<(Option<bool>, IpAddr)> {
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
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("{url}: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2')) {
        bail!("{url}: {status}");
    }
    let (is_tor, exit_address) = parse_body(body).with_context(|| format!("{url}: unexpected answer"))?;
    Ok(CheckResult { url: url.to_string(), is_tor, exit_address, latency_ms })
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
        match check(tor, url).await {
            Ok(r) => return Ok(r),
            Err(e) => errors.push(format!("{e:#}")),
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
