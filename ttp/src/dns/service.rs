//! The DNSPort's protocol core: one query in, one answer out. No sockets here, so it is
//! tested (and can be fuzzed) without a network; `server.rs` does the I/O.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Instant,
};

use futures::future::BoxFuture;
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{rdata, DNSClass, Name, RData, Record, RecordType},
};

use super::{
    automap::{Automap, Mapped},
    cache::Cache,
};
use crate::{
    control::proto::DnsStatus,
    load::{LoadStats, Shares},
    principal::{Asker, IsolationKey, Owner},
};

/// Browsers look this name up; an NXDOMAIN answer tells them not to enable DNS-over-HTTPS
/// on their own, so they keep using the system's (our) DNS.
pub const DOH_CANARY: &str = "use-application-dns.net";

/// TTL of virtual-address answers: short, the table keeps them longer.
const AUTOMAP_TTL: u32 = 60;
/// Lookups through Tor at once. Past this, a query that needs Tor gets SERVFAIL at once
/// (the client retries), so a flood of distinct names cannot keep cached, local and
/// virtual-address answers waiting behind it. One owner (a local user, a gateway client)
/// may hold half of them, so that its flood leaves room for everyone else's lookups.
pub const MAX_TOR_LOOKUPS: usize = 256;

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN).
    NotFound,
    /// Anything else (SERVFAIL): no circuit, timeout, exit refused.
    Failed(String),
}

/// Resolution through Tor, abstracted so the core is testable. Each lookup runs on
/// circuits of its asker's isolation key only, as that asker's streams do: an exit (or
/// an observer of circuits) cannot link two users' lookups.
pub trait Resolver: Send + Sync + 'static {
    fn lookup(&self, name: String, key: IsolationKey) -> BoxFuture<'static, Result<Vec<IpAddr>, LookupError>>;
    fn lookup_ptr(&self, ip: IpAddr, key: IsolationKey) -> BoxFuture<'static, Result<Vec<String>, LookupError>>;
}

/// Names only Tor can resolve: answered from the automap table, never sent to an exit.
pub fn is_tor_only(name: &str) -> bool {
    name == "onion" || name.ends_with(".onion")
}

/// The DNSPort's core. Everything an answer depends on is the asker's own: its cache, its
/// virtual addresses, its circuits (see [`Asker`]).
pub struct DnsService {
    resolver: Arc<dyn Resolver>,
    automap: Arc<Mutex<Automap>>,
    cache: Mutex<Cache>,
    lookups: tokio::sync::Semaphore,
    shares: Arc<Shares<Owner>>,
    load: Arc<LoadStats>,
    counts: Counts,
}

/// What the DNSPort did since start, for `ttp status` and `ttp top`.
#[derive(Default)]
struct Counts {
    queries: AtomicU64,
    cache_hits: AtomicU64,
    tor_lookups: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

impl DnsService {
    pub fn new(resolver: Arc<dyn Resolver>, automap: Arc<Mutex<Automap>>, cache: Cache, load: Arc<LoadStats>) -> Self {
        DnsService {
            resolver,
            automap,
            cache: Mutex::new(cache),
            lookups: tokio::sync::Semaphore::new(MAX_TOR_LOOKUPS),
            shares: Shares::new(crate::load::share_of(MAX_TOR_LOOKUPS)),
            load,
            counts: Counts::default(),
        }
    }

    /// The figures since start, and the lookups through Tor in flight now.
    pub fn status(&self) -> DnsStatus {
        let c = &self.counts;
        DnsStatus {
            queries: c.queries.load(Relaxed),
            cache_hits: c.cache_hits.load(Relaxed),
            tor_lookups: c.tor_lookups.load(Relaxed),
            tor_in_flight: MAX_TOR_LOOKUPS - self.lookups.available_permits(),
            refused: c.refused.load(Relaxed),
            failed: c.failed.load(Relaxed),
            automap_entries: self.automap.lock().expect("automap lock").len(),
        }
    }

    /// Answers one DNS message from `asker`. `None`: nothing to send (not a query, or too
    /// broken to even carry an id).
    pub async fn handle(&self, packet: &[u8], asker: &Asker) -> Option<Vec<u8>> {
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
        self.counts.queries.fetch_add(1, Relaxed);
        let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let (code, answers) = match q.query_type() {
            RecordType::A | RecordType::AAAA => self.address(&name, q.name(), q.query_type(), asker).await,
            RecordType::PTR => self.pointer(q.name(), asker).await,
            _ => (ResponseCode::NotImp, Vec::new()),
        };
        let mut resp = reply(&req);
        resp.set_response_code(code);
        resp.add_answers(answers);
        resp.to_vec().ok()
    }

    async fn address(&self, name: &str, qname: &Name, qtype: RecordType, asker: &Asker) -> (ResponseCode, Vec<Record>) {
        if name == DOH_CANARY || name.ends_with(&format!(".{DOH_CANARY}")) {
            return (ResponseCode::NXDomain, Vec::new());
        }
        if is_tor_only(name) {
            if qtype != RecordType::A {
                return (ResponseCode::NoError, Vec::new()); // virtual addresses are IPv4
            }
            let addr = self.automap.lock().expect("automap lock").map(asker.owner, name, Instant::now());
            return (
                ResponseCode::NoError,
                vec![Record::from_rdata(qname.clone(), AUTOMAP_TTL, RData::A(rdata::A(addr)))],
            );
        }
        let now = Instant::now();
        let cached = self.cache.lock().expect("cache lock").get(asker.owner, name, now);
        let (addrs, ttl) = match cached {
            Some(hit) => {
                self.counts.cache_hits.fetch_add(1, Relaxed);
                hit
            }
            None => match self.tor_lookup(asker, self.resolver.lookup(name.to_owned(), asker.key.clone())).await {
                Ok(addrs) => {
                    let mut cache = self.cache.lock().expect("cache lock");
                    cache.put(asker.owner, name, addrs.clone(), now);
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

    /// Runs a lookup through Tor if a slot is free and the asker holds less than its
    /// share of them; otherwise fails it at once.
    async fn tor_lookup<T>(
        &self,
        asker: &Asker,
        lookup: BoxFuture<'static, Result<T, LookupError>>,
    ) -> Result<T, LookupError> {
        let Some(_share) = self.shares.try_take(&asker.owner) else {
            LoadStats::count(&self.load.refused_share);
            self.counts.refused.fetch_add(1, Relaxed);
            return Err(LookupError::Failed("this client holds its whole share of the lookups through Tor".into()));
        };
        let Ok(_slot) = self.lookups.try_acquire() else {
            self.counts.refused.fetch_add(1, Relaxed);
            return Err(LookupError::Failed(format!("{MAX_TOR_LOOKUPS} lookups through Tor already in flight")));
        };
        self.counts.tor_lookups.fetch_add(1, Relaxed);
        let result = lookup.await;
        if matches!(result, Err(LookupError::Failed(_))) {
            self.counts.failed.fetch_add(1, Relaxed);
        }
        result
    }

    async fn pointer(&self, qname: &Name, asker: &Asker) -> (ResponseCode, Vec<Record>) {
        let Ok(net) = qname.parse_arpa_name() else {
            return (ResponseCode::NXDomain, Vec::new());
        };
        let ip = net.addr();
        let ptr = |host: &str| -> Option<Record> {
            let target = Name::from_ascii(format!("{host}.")).ok()?;
            Some(Record::from_rdata(qname.clone(), AUTOMAP_TTL, RData::PTR(rdata::PTR(target))))
        };
        if let IpAddr::V4(v4) = ip {
            // A virtual address names a mapping of the asker's own, or nothing: another
            // user's onion names are not the asker's business.
            match self.automap.lock().expect("automap lock").lookup(asker.owner, v4, Instant::now()) {
                Mapped::Name(n) => return (ResponseCode::NoError, ptr(&n).into_iter().collect()),
                Mapped::Nothing => return (ResponseCode::NXDomain, Vec::new()),
                Mapped::Outside => {}
            }
        }
        match self.tor_lookup(asker, self.resolver.lookup_ptr(ip, asker.key.clone())).await {
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

    /// Answers from a fixed list, and remembers under which key each lookup ran.
    #[derive(Default)]
    struct Fake {
        keys: Mutex<Vec<(String, IsolationKey)>>,
    }
    impl Resolver for Fake {
        fn lookup(&self, name: String, key: IsolationKey) -> BoxFuture<'static, Result<Vec<IpAddr>, LookupError>> {
            self.keys.lock().unwrap().push((name.clone(), key));
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
        fn lookup_ptr(&self, _ip: IpAddr, _key: IsolationKey) -> BoxFuture<'static, Result<Vec<String>, LookupError>> {
            async { Ok(vec!["host.example.com".to_string()]) }.boxed()
        }
    }

    fn service_with(fake: Arc<Fake>) -> DnsService {
        let automap = Automap::new("10.192.0.0/10".parse().unwrap(), 100, Duration::from_secs(60));
        let cache = Cache::new(Duration::from_secs(60), 100);
        DnsService::new(fake, Arc::new(Mutex::new(automap)), cache, Arc::default())
    }

    fn service() -> DnsService {
        service_with(Arc::default())
    }

    fn alice() -> Asker {
        Asker::local(1000, 7)
    }

    fn bob() -> Asker {
        Asker::local(1001, 7)
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    async fn ask(s: &DnsService, name: &str, t: RecordType) -> Message {
        ask_as(s, &alice(), name, t).await
    }

    async fn ask_as(s: &DnsService, who: &Asker, name: &str, t: RecordType) -> Message {
        Message::from_vec(&s.handle(&query(name, t), who).await.expect("an answer")).unwrap()
    }

    fn ptr_name(ip: &std::net::Ipv4Addr) -> String {
        let o = ip.octets();
        format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
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
        let ptr = ask(&s, &ptr_name(ip), RecordType::PTR).await;
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
        let r = Message::from_vec(&s.handle(&junk, &alice()).await.unwrap()).unwrap();
        assert_eq!((r.id(), r.response_code()), (0x4242, ResponseCode::FormErr));
        // Too short for a header, or a response: no answer at all.
        assert!(s.handle(&[1, 2, 3], &alice()).await.is_none());
        let mut resp = Message::new();
        resp.set_message_type(MessageType::Response);
        assert!(s.handle(&resp.to_vec().unwrap(), &alice()).await.is_none());
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
            let _ = s.handle(&pkt, &alice()).await;
        }
    }

    /// Another user's virtual address means nothing to a PTR query (NXDOMAIN, as for an
    /// address nobody holds), and the same name gets another address for another user.
    #[tokio::test]
    async fn one_users_onion_names_are_not_anothers() {
        let s = service();
        let a = ask_as(&s, &alice(), "secret.onion.", RecordType::A).await;
        let RData::A(rdata::A(ip)) = a.answers()[0].data() else { panic!("not an A record") };
        let theirs = ask_as(&s, &bob(), &ptr_name(ip), RecordType::PTR).await;
        assert_eq!((theirs.response_code(), theirs.answers().len()), (ResponseCode::NXDomain, 0));
        let lan = Asker::remote("10.77.0.2".parse().unwrap());
        assert_eq!(ask_as(&s, &lan, &ptr_name(ip), RecordType::PTR).await.response_code(), ResponseCode::NXDomain);
        let b = ask_as(&s, &bob(), "secret.onion.", RecordType::A).await;
        assert_ne!(b.answers()[0].data(), a.answers()[0].data());
        let mine = ask_as(&s, &alice(), &ptr_name(ip), RecordType::PTR).await;
        assert_eq!(mine.answers()[0].data().to_string(), "secret.onion.");
    }

    /// Each user's lookup runs under its own isolation key, and one user's cached answer
    /// is not another's (it would come back at once, with less than the full TTL).
    #[tokio::test]
    async fn lookups_are_isolated_and_cached_per_user() {
        let fake = Arc::new(Fake::default());
        let s = service_with(fake.clone());
        ask_as(&s, &alice(), "example.com.", RecordType::A).await;
        ask_as(&s, &alice(), "example.com.", RecordType::A).await; // from Alice's cache
        let other_cgroup = Asker::local(1000, 8);
        ask_as(&s, &other_cgroup, "example.com.", RecordType::A).await; // Alice's cache too
        ask_as(&s, &bob(), "example.com.", RecordType::A).await;
        let keys = fake.keys.lock().unwrap().clone();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0], ("example.com".to_string(), alice().key));
        assert_eq!(keys[1], ("example.com".to_string(), bob().key));
    }

    /// One user's flood of names that never resolve holds at most half of the slots:
    /// another user's lookup still goes through Tor.
    #[tokio::test]
    async fn one_users_flood_leaves_lookups_for_others() {
        let s = Arc::new(service());
        let mut flood = Vec::new();
        for i in 0..MAX_TOR_LOOKUPS {
            let s = s.clone();
            flood.push(tokio::spawn(async move {
                s.handle(&query(&format!("hang{i}.test."), RecordType::A), &alice()).await
            }));
        }
        while s.lookups.available_permits() > MAX_TOR_LOOKUPS / 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.lookups.available_permits(), MAX_TOR_LOOKUPS / 2, "the flood holds exactly its share");
        let quick = |who: Asker| {
            let s = s.clone();
            async move {
                let q = ask_as(&s, &who, "example.com.", RecordType::A);
                tokio::time::timeout(Duration::from_secs(1), q).await.expect("answered at once")
            }
        };
        assert_eq!(quick(alice()).await.response_code(), ResponseCode::ServFail);
        assert_eq!(quick(bob()).await.answers().len(), 1);
        assert!(s.load.refused_share.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        for f in flood {
            f.abort();
        }
    }

    /// A flood of names whose resolution never ends holds every Tor slot (two users, each
    /// its share); then a new name gets SERVFAIL at once, and cached and local answers do
    /// not wait.
    #[tokio::test]
    async fn a_flood_of_slow_lookups_does_not_starve_other_queries() {
        let s = Arc::new(service());
        assert_eq!(ask(&s, "example.com.", RecordType::A).await.answers().len(), 1); // cached now
        let mut flood = Vec::new();
        for i in 0..MAX_TOR_LOOKUPS {
            let s = s.clone();
            let who = Asker::local(2000 + (i % 2) as u32, 7);
            flood.push(tokio::spawn(
                async move { s.handle(&query(&format!("hang{i}.test."), RecordType::A), &who).await },
            ));
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
