//! The DNSPort's protocol core: one query in, one answer out. No sockets here, so it is
//! tested (and can be fuzzed) without a network; `server.rs` does the I/O.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::future::BoxFuture;
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{rdata, DNSClass, Name, RData, Record, RecordType},
};

use super::{automap::Automap, cache::Cache};

/// Browsers look this name up; an NXDOMAIN answer tells them not to enable DNS-over-HTTPS
/// on their own, so they keep using the system's (our) DNS.
pub const DOH_CANARY: &str = "use-application-dns.net";

/// TTL of virtual-address answers: short, the table keeps them longer.
const AUTOMAP_TTL: u32 = 60;
/// Lookups through Tor at once. Past this, a query that needs Tor gets SERVFAIL at once
/// (the client retries), so a flood of distinct names cannot keep cached, local and
/// virtual-address answers waiting behind it.
pub const MAX_TOR_LOOKUPS: usize = 256;

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN).
    NotFound,
    /// Anything else (SERVFAIL): no circuit, timeout, exit refused.
    Failed(String),
}

/// Resolution through Tor, abstracted so the core is testable.
pub trait Resolver: Send + Sync + 'static {
    fn lookup(&self, name: String) -> BoxFuture<'static, Result<Vec<IpAddr>, LookupError>>;
    fn lookup_ptr(&self, ip: IpAddr) -> BoxFuture<'static, Result<Vec<String>, LookupError>>;
}

/// Names only Tor can resolve: answered from the automap table, never sent to an exit.
pub fn is_tor_only(name: &str) -> bool {
    name == "onion" || name.ends_with(".onion")
}

pub struct DnsService {
    resolver: Arc<dyn Resolver>,
    automap: Arc<Mutex<Automap>>,
    cache: Mutex<Cache>,
    lookups: tokio::sync::Semaphore,
}

impl DnsService {
    pub fn new(resolver: Arc<dyn Resolver>, automap: Arc<Mutex<Automap>>, cache: Cache) -> Self {
        DnsService {
            resolver,
            automap,
            cache: Mutex::new(cache),
            lookups: tokio::sync::Semaphore::new(MAX_TOR_LOOKUPS),
        }
    }

    /// Answers one DNS message. `None`: nothing to send (not a query, or too broken to
    /// even carry an id).
    pub async fn handle(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let req = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => return formerr_from_header(packet),
        };
        if req.message_type() != MessageType::Query {
            return None;
        }
        if req.op_code() != OpCode::Query {
            return error(&req, ResponseCode::NotImp);
        }
        let [q] = req.queries() else {
            return error(&req, ResponseCode::FormErr);
        };
        if q.query_class() != DNSClass::IN {
            return error(&req, ResponseCode::NotImp);
        }
        let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let (code, answers) = match q.query_type() {
            RecordType::A | RecordType::AAAA => self.address(&name, q.name(), q.query_type()).await,
            RecordType::PTR => self.pointer(q.name()).await,
            _ => (ResponseCode::NotImp, Vec::new()),
        };
        let mut resp = reply(&req);
        resp.set_response_code(code);
        resp.add_answers(answers);
        resp.to_vec().ok()
    }

    async fn address(&self, name: &str, qname: &Name, qtype: RecordType) -> (ResponseCode, Vec<Record>) {
        if name == DOH_CANARY || name.ends_with(&format!(".{DOH_CANARY}")) {
            return (ResponseCode::NXDomain, Vec::new());
        }
        if is_tor_only(name) {
            if qtype != RecordType::A {
                return (ResponseCode::NoError, Vec::new()); // virtual addresses are IPv4
            }
            let addr = self.automap.lock().expect("automap lock").map(name, Instant::now());
            return (
                ResponseCode::NoError,
                vec![Record::from_rdata(qname.clone(), AUTOMAP_TTL, RData::A(rdata::A(addr)))],
            );
        }
        let now = Instant::now();
        let cached = self.cache.lock().expect("cache lock").get(name, now);
        let (addrs, ttl) = match cached {
            Some(hit) => hit,
            None => match self.tor_lookup(self.resolver.lookup(name.to_owned())).await {
                Ok(addrs) => {
                    let mut cache = self.cache.lock().expect("cache lock");
                    cache.put(name, addrs.clone(), now);
                    (addrs, cache.ttl())
                }
                Err(LookupError::NotFound) => return (ResponseCode::NXDomain, Vec::new()),
                Err(LookupError::Failed(e)) => {
                    tracing::debug!(name = %safelog::sensitive(&name), "DNS lookup through Tor failed: {e}");
                    return (ResponseCode::ServFail, Vec::new());
                }
            },
        };
        let records = addrs
            .into_iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(rdata::A(v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(rdata::AAAA(v6))),
                _ => None,
            })
            .map(|r| Record::from_rdata(qname.clone(), ttl, r))
            .collect();
        (ResponseCode::NoError, records)
    }

    /// Runs a lookup through Tor if a slot is free; otherwise fails it at once.
    async fn tor_lookup<T>(&self, lookup: BoxFuture<'static, Result<T, LookupError>>) -> Result<T, LookupError> {
        let Ok(_slot) = self.lookups.try_acquire() else {
            return Err(LookupError::Failed(format!("{MAX_TOR_LOOKUPS} lookups through Tor already in flight")));
        };
        lookup.await
    }

    async fn pointer(&self, qname: &Name) -> (ResponseCode, Vec<Record>) {
        let Ok(net) = qname.parse_arpa_name() else {
            return (ResponseCode::NXDomain, Vec::new());
        };
        let ip = net.addr();
        let ptr = |host: &str| -> Option<Record> {
            let target = Name::from_ascii(format!("{host}.")).ok()?;
            Some(Record::from_rdata(qname.clone(), AUTOMAP_TTL, RData::PTR(rdata::PTR(target))))
        };
        if let IpAddr::V4(v4) = ip {
            let mut map = self.automap.lock().expect("automap lock");
            if map.contains_addr(v4) {
                return match map.name_of(v4, Instant::now()) {
                    Some(n) => (ResponseCode::NoError, ptr(&n).into_iter().collect()),
                    None => (ResponseCode::NXDomain, Vec::new()),
                };
            }
        }
        match self.tor_lookup(self.resolver.lookup_ptr(ip)).await {
            Ok(names) => (ResponseCode::NoError, names.iter().filter_map(|n| ptr(n.trim_end_matches('.'))).collect()),
            Err(LookupError::NotFound) => (ResponseCode::NXDomain, Vec::new()),
            Err(LookupError::Failed(_)) => (ResponseCode::ServFail, Vec::new()),
        }
    }
}

fn reply(req: &Message) -> Message {
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true);
    for q in req.queries() {
        m.add_query(q.clone());
    }
    m
}

fn error(req: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = reply(req);
    m.set_response_code(code);
    m.to_vec().ok()
}

/// FORMERR for a message that does not parse, if at least its header is there and it is
/// a query (never answer a response: that would let two servers ping-pong).
fn formerr_from_header(packet: &[u8]) -> Option<Vec<u8>> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;
    use hickory_proto::op::Query;

    use super::*;

    struct Fake;
    impl Resolver for Fake {
        fn lookup(&self, name: String) -> BoxFuture<'static, Result<Vec<IpAddr>, LookupError>> {
            async move {
                match name.as_str() {
                    "example.com" => Ok(vec!["93.184.216.34".parse().unwrap(), "2606:2800::1".parse().unwrap()]),
                    "broken.test" => Err(LookupError::Failed("no exit".into())),
                    n if n.starts_with("hang") => futures::future::pending().await,
                    _ => Err(LookupError::NotFound),
                }
            }
            .boxed()
        }
        fn lookup_ptr(&self, _ip: IpAddr) -> BoxFuture<'static, Result<Vec<String>, LookupError>> {
            async { Ok(vec!["host.example.com".to_string()]) }.boxed()
        }
    }

    fn service() -> DnsService {
        let automap = Automap::new("10.192.0.0/10".parse().unwrap(), 100, Duration::from_secs(60));
        DnsService::new(Arc::new(Fake), Arc::new(Mutex::new(automap)), Cache::new(Duration::from_secs(60), 100))
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    async fn ask(s: &DnsService, name: &str, t: RecordType) -> Message {
        Message::from_vec(&s.handle(&query(name, t)).await.expect("an answer")).unwrap()
    }

    #[tokio::test]
    async fn a_and_aaaa_through_the_resolver() {
        let s = service();
        let a = ask(&s, "example.com.", RecordType::A).await;
        assert_eq!(a.id(), 0x4242);
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert_eq!(a.answers().len(), 1);
        let aaaa = ask(&s, "Example.COM.", RecordType::AAAA).await;
        assert_eq!(aaaa.answers()[0].data().to_string(), "2606:2800::1");
        assert_eq!(ask(&s, "nope.test.", RecordType::A).await.response_code(), ResponseCode::NXDomain);
        assert_eq!(ask(&s, "broken.test.", RecordType::A).await.response_code(), ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn onion_names_get_virtual_addresses_and_ptr_maps_back() {
        let s = service();
        let a = ask(&s, "abcdef.onion.", RecordType::A).await;
        let RData::A(rdata::A(ip)) = a.answers()[0].data() else { panic!("not an A record") };
        assert!("10.192.0.0/10".parse::<ipnet::Ipv4Net>().unwrap().contains(ip));
        assert!(ask(&s, "abcdef.onion.", RecordType::AAAA).await.answers().is_empty());
        let o = ip.octets();
        let ptr = ask(&s, &format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]), RecordType::PTR).await;
        assert_eq!(ptr.answers()[0].data().to_string(), "abcdef.onion.");
        let other = ask(&s, "4.3.2.1.in-addr.arpa.", RecordType::PTR).await;
        assert_eq!(other.answers()[0].data().to_string(), "host.example.com.");
    }

    #[tokio::test]
    async fn canary_other_types_and_malformed_input() {
        let s = service();
        assert_eq!(ask(&s, "use-application-dns.net.", RecordType::A).await.response_code(), ResponseCode::NXDomain);
        assert_eq!(ask(&s, "example.com.", RecordType::MX).await.response_code(), ResponseCode::NotImp);
        // A header and garbage: FORMERR with the same id.
        let mut junk = query("example.com.", RecordType::A);
        junk.truncate(14);
        let r = Message::from_vec(&s.handle(&junk).await.unwrap()).unwrap();
        assert_eq!((r.id(), r.response_code()), (0x4242, ResponseCode::FormErr));
        // Too short for a header, or a response: no answer at all.
        assert!(s.handle(&[1, 2, 3]).await.is_none());
        let mut resp = Message::new();
        resp.set_message_type(MessageType::Response);
        assert!(s.handle(&resp.to_vec().unwrap()).await.is_none());
    }

    #[tokio::test]
    async fn random_bytes_never_panic() {
        let s = service();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..600 {
            let pkt: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = s.handle(&pkt).await;
        }
    }

    /// A flood of names whose resolution never ends holds every Tor slot; then a new
    /// name gets SERVFAIL at once, and cached and local answers do not wait.
    #[tokio::test]
    async fn a_flood_of_slow_lookups_does_not_starve_other_queries() {
        let s = Arc::new(service());
        assert_eq!(ask(&s, "example.com.", RecordType::A).await.answers().len(), 1); // cached now
        let mut flood = Vec::new();
        for i in 0..MAX_TOR_LOOKUPS {
            let s = s.clone();
            flood.push(tokio::spawn(async move { s.handle(&query(&format!("hang{i}.test."), RecordType::A)).await }));
        }
        while s.lookups.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let quick = |name: &'static str, t: RecordType| {
            let s = s.clone();
            async move { tokio::time::timeout(Duration::from_secs(1), ask(&s, name, t)).await.expect("answered at once") }
        };
        assert_eq!(quick("another.test.", RecordType::A).await.response_code(), ResponseCode::ServFail);
        assert_eq!(quick("example.com.", RecordType::A).await.answers().len(), 1);
        assert_eq!(quick("use-application-dns.net.", RecordType::A).await.response_code(), ResponseCode::NXDomain);
        assert_eq!(quick("xyz.onion.", RecordType::A).await.answers().len(), 1);
        for f in flood {
            f.abort();
        }
    }
}
