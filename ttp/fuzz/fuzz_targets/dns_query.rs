//! Any DNS message, from any asker: the DNSPort's core never panics, answers a query with
//! the query's own id, and never answers a response (two servers would ping-pong).
#![no_main]

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use futures::{future::BoxFuture, FutureExt};
use libfuzzer_sys::fuzz_target;
use ttp::{
    dns::{Automap, Cache, DnsService, LookupError, Resolver},
    principal::{Asker, IsolationKey},
};

/// Answers at once, from the name alone: the input decides every path.
struct Instant;

impl Resolver for Instant {
    fn lookup(&self, name: String, _: IsolationKey) -> BoxFuture<'static, Result<Vec<IpAddr>, LookupError>> {
        let r = match name.len() % 3 {
            0 => Ok(vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()]),
            1 => Err(LookupError::NotFound),
            _ => Err(LookupError::Failed("no exit".into())),
        };
        async move { r }.boxed()
    }

    fn lookup_ptr(&self, ip: IpAddr, _: IsolationKey) -> BoxFuture<'static, Result<Vec<String>, LookupError>> {
        let r =
            if ip.is_ipv4() { Ok(vec!["host.example.com".into(), "a..b".into()]) } else { Err(LookupError::NotFound) };
        async move { r }.boxed()
    }
}

fn service() -> &'static (tokio::runtime::Runtime, DnsService) {
    static S: OnceLock<(tokio::runtime::Runtime, DnsService)> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let automap = Automap::new("10.192.0.0/10".parse().unwrap(), 1024, Duration::from_secs(60));
        let cache = Cache::new(Duration::from_secs(60), 1024);
        (rt, DnsService::new(Arc::new(Instant), Arc::new(Mutex::new(automap)), cache, Arc::default()))
    })
}

fuzz_target!(|b: &[u8]| {
    let Some((&who, packet)) = b.split_first() else { return };
    // A few askers, so that one's mappings and cache meet another's queries.
    let asker = match who % 3 {
        0 => Asker::local(1000, 7),
        1 => Asker::local(1001, 7),
        _ => Asker::remote("10.77.0.2".parse().unwrap()),
    };
    let (rt, s) = service();
    let Some(answer) = rt.block_on(s.handle(packet, &asker)) else { return };
    assert!(packet.len() >= 12, "an answer to something without a header");
    assert_eq!(answer[..2], packet[..2], "the answer's id is not the query's");
    assert_eq!(packet[2] & 0x80, 0, "a response was answered");
    assert_ne!(answer[2] & 0x80, 0, "the answer is not a response");
});
