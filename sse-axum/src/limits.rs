//! [`Limits`]: connection caps and rate limits, and refusals that keep clients alive.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::request::Parts;
use ipnet::IpNet;
use parking_lot::Mutex;
use resumable_sse_core::SessionId;
use resumable_sse_core::collections::shrink_when_sparse;

use crate::auth::Identity;
use crate::metrics::count_refusal;

/// How many client addresses the refusal back-off remembers at most. Beyond it, a new address
/// is refused with the base delay (jittered) until the sweeper forgets old ones.
const MAX_REMEMBERED: usize = 100_000;

/// How often forgotten back-offs and idle rate-limit keys are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How many hops of a forwarding header are looked at, from the right.
const MAX_HOPS: usize = 32;

/// Connection caps, rate limits and trusted proxies; every limit is off until set.
///
/// Installed with [`SseLayer::with_limits`](crate::SseLayer::with_limits). The limits are
/// checked by the [`events`](crate::events) endpoint (and [`publish`](crate::publish) of
/// [`router`](crate::router)) for every request the layer passes, so both servers
/// (`axum::serve` and [`serve`](crate::serve())) enforce them alike:
///
/// - **connection caps**: in total, per client address, per session, per principal; an event
///   stream counts until its response ends (the count travels with the connection, whichever
///   server writes it);
/// - **connect rates**: per client address and per session, in connects per second;
/// - **publish rate**: per principal, or per client address for anonymous publishers.
///
/// An event stream over a limit is answered `200` (any other status makes a browser's
/// `EventSource` give up for good) with a `retry:` hint, one `refused` event
/// (`{"reason": "max_connections_per_ip", "retry_ms": 5123}`) and the end of the response.
/// The hint grows with each refusal of the same client address (doubling from
/// [`refusal_retry`](Limits::refusal_retry)'s base up to its maximum, forgotten after twice
/// the maximum without a refusal) and is jittered (uniform in the upper half of the current
/// step), so a crowd refused together does not come back together. A publish over its rate is
/// answered `429` with `Retry-After` and a JSON error, before anything is stored.
///
/// The client address is the socket's peer ([`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo),
/// which both servers provide), or, when the peer is a [trusted
/// proxy](Limits::trusted_proxy), the right-most address of `X-Forwarded-For` (else of
/// `Forwarded`) that is not itself a trusted proxy. Without `ConnectInfo` the limits per
/// address do not apply.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use resumable_sse_axum::{Limits, SseLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limits = Limits::new()
///     .max_connections(10_000)
///     .max_connections_per_ip(100)
///     .max_connections_per_session(8)
///     .connect_rate_per_ip(NonZeroU32::new(10).unwrap())
///     .publish_rate(NonZeroU32::new(100).unwrap())
///     .trusted_proxy("10.0.0.0/8".parse()?)
///     .refusal_retry(Duration::from_secs(5), Duration::from_secs(60));
/// assert_eq!(limits.get_max_connections_per_ip(), Some(100));
/// let hub = resumable_sse_axum::memory_hub(Default::default());
/// let app: Router = resumable_sse_axum::router(SseLayer::new(hub).with_limits(limits));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Limits {
    max_connections: Option<u32>,
    per_ip: Option<u32>,
    per_session: Option<u32>,
    per_principal: Option<u32>,
    connect_rate_per_ip: Option<NonZeroU32>,
    connect_rate_per_session: Option<NonZeroU32>,
    publish_rate: Option<NonZeroU32>,
    trusted: Vec<IpNet>,
    retry_base: Duration,
    retry_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            per_ip: None,
            per_session: None,
            per_principal: None,
            connect_rate_per_ip: None,
            connect_rate_per_session: None,
            publish_rate: None,
            trusted: Vec::new(),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// No limits; refusals (once limits are set) ask clients to wait 5 s, doubling up to 60 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Caps the open event streams in total.
    ///
    /// ```
    /// let limits = resumable_sse_axum::Limits::new().max_connections(10_000);
    /// assert_eq!(limits.get_max_connections(), Some(10_000));
    /// ```
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// Caps the open event streams of one client address.
    ///
    /// ```
    /// let limits = resumable_sse_axum::Limits::new().max_connections_per_ip(100);
    /// assert_eq!(limits.get_max_connections_per_ip(), Some(100));
    /// ```
    pub fn max_connections_per_ip(mut self, n: u32) -> Self {
        self.per_ip = Some(n);
        self
    }

    /// Caps the open event streams of one session (tabs of one browser share it).
    ///
    /// ```
    /// let limits = resumable_sse_axum::Limits::new().max_connections_per_session(8);
    /// assert_eq!(limits.get_max_connections_per_session(), Some(8));
    /// ```
    pub fn max_connections_per_session(mut self, n: u32) -> Self {
        self.per_session = Some(n);
        self
    }

    /// Caps the open event streams of one authenticated principal (anonymous clients are
    /// capped by address instead).
    ///
    /// ```
    /// let limits = resumable_sse_axum::Limits::new().max_connections_per_principal(20);
    /// assert_eq!(limits.get_max_connections_per_principal(), Some(20));
    /// ```
    pub fn max_connections_per_principal(mut self, n: u32) -> Self {
        self.per_principal = Some(n);
        self
    }

    /// Limits event-stream connects per client address to `per_second`, with bursts of as
    /// many (GCRA: one connect's allowance comes back every `1 / per_second` s).
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// let limits = resumable_sse_axum::Limits::new().connect_rate_per_ip(NonZeroU32::new(10).unwrap());
    /// assert_eq!(limits.get_connect_rate_per_ip(), NonZeroU32::new(10));
    /// ```
    pub fn connect_rate_per_ip(mut self, per_second: NonZeroU32) -> Self {
        self.connect_rate_per_ip = Some(per_second);
        self
    }

    /// Limits event-stream connects per session to `per_second`, with bursts of as many.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// let limits = resumable_sse_axum::Limits::new().connect_rate_per_session(NonZeroU32::new(2).unwrap());
    /// assert_eq!(limits.get_connect_rate_per_session(), NonZeroU32::new(2));
    /// ```
    pub fn connect_rate_per_session(mut self, per_second: NonZeroU32) -> Self {
        self.connect_rate_per_session = Some(per_second);
        self
    }

    /// Limits publishes (requests to [`publish`](crate::publish)) to `per_second` per
    /// principal, or per client address for anonymous publishers, with bursts of as many.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// let limits = resumable_sse_axum::Limits::new().publish_rate(NonZeroU32::new(100).unwrap());
    /// assert_eq!(limits.get_publish_rate(), NonZeroU32::new(100));
    /// ```
    pub fn publish_rate(mut self, per_second: NonZeroU32) -> Self {
        self.publish_rate = Some(per_second);
        self
    }

    /// Trusts the proxies in `network` to say who their client is (`X-Forwarded-For`, else
    /// `Forwarded`); repeatable. Only a request whose peer is in one of these networks is
    /// read that way, and the client is the right-most address that is not itself trusted:
    /// what a client writes into the header itself sits left of it and is never believed.
    /// A header that cannot be read there (garbage, `unknown`, an obfuscated name) makes the
    /// nearest trusted proxy the client.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limits = resumable_sse_axum::Limits::new()
    ///     .trusted_proxy("10.0.0.0/8".parse()?)
    ///     .trusted_proxy("::1/128".parse()?);
    /// assert_eq!(limits.get_trusted_proxies().len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn trusted_proxy(mut self, network: IpNet) -> Self {
        self.trusted.push(network);
        self
    }

    /// The delay a refused client is asked to wait: `base` at first, doubling with each
    /// refusal of the same address up to `max` (each jittered into the upper half of its
    /// step).
    ///
    /// ```
    /// use std::time::Duration;
    /// let limits = resumable_sse_axum::Limits::new()
    ///     .refusal_retry(Duration::from_secs(2), Duration::from_secs(30));
    /// assert_eq!(limits.get_refusal_retry(), (Duration::from_secs(2), Duration::from_secs(30)));
    /// ```
    pub fn refusal_retry(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_base);
        self
    }

    /// The cap on open event streams in total.
    pub fn get_max_connections(&self) -> Option<u32> {
        self.max_connections
    }

    /// The cap per client address.
    pub fn get_max_connections_per_ip(&self) -> Option<u32> {
        self.per_ip
    }

    /// The cap per session.
    pub fn get_max_connections_per_session(&self) -> Option<u32> {
        self.per_session
    }

    /// The cap per principal.
    pub fn get_max_connections_per_principal(&self) -> Option<u32> {
        self.per_principal
    }

    /// Connects per second per client address.
    pub fn get_connect_rate_per_ip(&self) -> Option<NonZeroU32> {
        self.connect_rate_per_ip
    }

    /// Connects per second per session.
    pub fn get_connect_rate_per_session(&self) -> Option<NonZeroU32> {
        self.connect_rate_per_session
    }

    /// Publishes per second per principal (or address).
    pub fn get_publish_rate(&self) -> Option<NonZeroU32> {
        self.publish_rate
    }

    /// The trusted proxies.
    pub fn get_trusted_proxies(&self) -> &[IpNet] {
        &self.trusted
    }

    /// The refusal delay's base and maximum.
    pub fn get_refusal_retry(&self) -> (Duration, Duration) {
        (self.retry_base, self.retry_max)
    }
}

/// Whom a publish is counted against.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Publisher {
    Principal(Box<str>),
    Address(IpAddr),
}

/// How often one client address was refused lately.
#[derive(Clone, Copy)]
struct Strikes {
    count: u32,
    last: Instant,
}

/// Open event streams, by what they are capped on. Entries are removed at zero, so the maps
/// hold no more than the open streams.
#[derive(Default)]
struct Open {
    total: u64,
    per_ip: HashMap<IpAddr, u32>,
    per_session: HashMap<SessionId, u32>,
    per_principal: HashMap<Box<str>, u32>,
}

/// The state behind [`Limits`]: counts, rate limiters and the refusal back-off.
pub(crate) struct Limiter {
    limits: Limits,
    open: Mutex<Open>,
    connect_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    connect_session: Option<DefaultKeyedRateLimiter<SessionId>>,
    publish: Option<DefaultKeyedRateLimiter<Publisher>>,
    strikes: Mutex<HashMap<IpAddr, Strikes>>,
    sweeper: Once,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A request refused by a limit: why, and how long the client should wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refused {
    pub(crate) reason: &'static str,
    pub(crate) retry: Duration,
}

/// An event stream counted against the caps; uncounted when dropped (with the connection).
pub(crate) struct Admission {
    limiter: Arc<Limiter>,
    ip: Option<IpAddr>,
    session: Option<SessionId>,
    principal: Option<Box<str>>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

fn keyed<K: Clone + Eq + std::hash::Hash>(
    per_second: Option<NonZeroU32>,
) -> Option<DefaultKeyedRateLimiter<K>> {
    per_second.map(|n| RateLimiter::keyed(Quota::per_second(n)))
}

impl Limiter {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Limiter {
            connect_ip: keyed(limits.connect_rate_per_ip),
            connect_session: keyed(limits.connect_rate_per_session),
            publish: keyed(limits.publish_rate),
            limits,
            open: Mutex::default(),
            strikes: Mutex::default(),
            sweeper: Once::new(),
        })
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Starts the sweeper on first use: there is a runtime by then.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.call_once(|| {
            if tokio::runtime::Handle::try_current().is_ok() {
                resumable_sse_core::task::spawn_periodic(
                    Arc::downgrade(self),
                    SWEEP_EVERY,
                    |limiter| async move { limiter.sweep() },
                );
            }
        });
    }

    /// Forgets old refusals and rate-limit keys whose allowance is full again.
    fn sweep(&self) {
        let forget = self.limits.retry_max.saturating_mul(2);
        let now = Instant::now();
        {
            let mut strikes = self.strikes.lock();
            strikes.retain(|_, s| now.duration_since(s.last) < forget);
            strikes.shrink_to_fit();
        }
        if let Some(limiter) = &self.connect_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.connect_session {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.publish {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// The client's address: the peer, or what a trusted proxy peer says.
    pub(crate) fn client_addr(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_canonical())?;
        Some(forwarded_client(peer, &self.limits.trusted, &parts.headers))
    }

    /// A refusal for `reason`: counted, and with a delay that grows with the client's recent
    /// refusals, jittered, and at least `at_least` (when a rate limit allows again).
    fn refuse(&self, reason: &'static str, addr: Option<IpAddr>, at_least: Duration) -> Refused {
        count_refusal(reason);
        let steps = addr.map_or(0, |addr| self.strike(addr));
        let (base, max) = (self.limits.retry_base, self.limits.retry_max);
        let step = base.saturating_mul(1u32 << steps.min(20)).min(max);
        // Uniform in [step / 2, step]: the steps double, so each refusal's delay is at least
        // the previous one's.
        let half = step / 2;
        let jitter = rand::random_range(0..=half.as_millis().try_into().unwrap_or(u64::MAX));
        let retry = (half + Duration::from_millis(jitter)).max(at_least);
        Refused { reason, retry }
    }

    /// Records one more refusal of `addr`; returns how many came before it lately.
    fn strike(&self, addr: IpAddr) -> u32 {
        let now = Instant::now();
        let forget = self.limits.retry_max.saturating_mul(2);
        let mut strikes = self.strikes.lock();
        let full = strikes.len() >= MAX_REMEMBERED;
        match strikes.entry(addr) {
            Entry::Occupied(mut entry) => {
                let s = entry.get_mut();
                if now.duration_since(s.last) >= forget {
                    s.count = 0;
                }
                let before = s.count;
                s.count = s.count.saturating_add(1);
                s.last = now;
                before
            }
            Entry::Vacant(entry) => {
                if !full {
                    entry.insert(Strikes {
                        count: 1,
                        last: now,
                    });
                }
                0
            }
        }
    }

    /// The first checks of an event stream, before anything else is done for it: the connect
    /// rate of its address, then the caps in total and per address.
    pub(crate) fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Admission, Refused> {
        self.start_sweeper();
        if let (Some(limiter), Some(addr)) = (&self.connect_ip, ip)
            && let Err(not_until) = limiter.check_key(&addr)
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(self.refuse("connect_rate_per_ip", ip, wait));
        }
        let mut open = self.open.lock();
        if self
            .limits
            .max_connections
            .is_some_and(|max| open.total >= u64::from(max))
        {
            drop(open);
            return Err(self.refuse("max_connections", ip, Duration::ZERO));
        }
        if let (Some(max), Some(addr)) = (self.limits.per_ip, ip)
            && open.per_ip.get(&addr).copied().unwrap_or(0) >= max
        {
            drop(open);
            return Err(self.refuse("max_connections_per_ip", ip, Duration::ZERO));
        }
        open.total += 1;
        if let Some(addr) = ip {
            *open.per_ip.entry(addr).or_insert(0) += 1;
        }
        Ok(Admission {
            limiter: self.clone(),
            ip,
            session: None,
            principal: None,
        })
    }

    /// The checks that need the session and the principal: the session's connect rate, and
    /// the caps per session and per principal. On a refusal, `admission` is to be dropped.
    pub(crate) fn admit_session(
        &self,
        admission: &mut Admission,
        session: SessionId,
        identity: &Identity,
    ) -> Result<(), Refused> {
        let ip = admission.ip;
        if let Some(limiter) = &self.connect_session
            && let Err(not_until) = limiter.check_key(&session)
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(self.refuse("connect_rate_per_session", ip, wait));
        }
        let principal = identity.principal_name();
        let mut open = self.open.lock();
        if self
            .limits
            .per_session
            .is_some_and(|max| open.per_session.get(&session).copied().unwrap_or(0) >= max)
        {
            drop(open);
            return Err(self.refuse("max_connections_per_session", ip, Duration::ZERO));
        }
        if let (Some(max), Some(name)) = (self.limits.per_principal, principal)
            && open.per_principal.get(name).copied().unwrap_or(0) >= max
        {
            drop(open);
            return Err(self.refuse("max_connections_per_principal", ip, Duration::ZERO));
        }
        *open.per_session.entry(session).or_insert(0) += 1;
        admission.session = Some(session);
        if self.limits.per_principal.is_some()
            && let Some(name) = principal
        {
            *open.per_principal.entry(name.into()).or_insert(0) += 1;
            admission.principal = Some(name.into());
        }
        Ok(())
    }

    /// Whether a publish by `identity` from `ip` is within the publish rate; else how long
    /// until it would be.
    pub(crate) fn check_publish(
        self: &Arc<Self>,
        identity: &Identity,
        ip: Option<IpAddr>,
    ) -> Result<(), Duration> {
        self.start_sweeper();
        let Some(limiter) = &self.publish else {
            return Ok(());
        };
        let key = match (identity.principal_name(), ip) {
            (Some(name), _) => Publisher::Principal(name.into()),
            (None, Some(addr)) => Publisher::Address(addr),
            (None, None) => return Ok(()),
        };
        limiter.check_key(&key).map_err(|not_until| {
            count_refusal("publish_rate");
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock();
        open.total = open.total.saturating_sub(1);
        fn release<K: Eq + std::hash::Hash>(map: &mut HashMap<K, u32>, key: K) {
            if let Entry::Occupied(mut entry) = map.entry(key) {
                *entry.get_mut() -= 1;
                if *entry.get() == 0 {
                    entry.remove();
                    shrink_when_sparse(map);
                }
            }
        }
        if let Some(ip) = self.ip {
            release(&mut open.per_ip, ip);
        }
        if let Some(session) = self.session {
            release(&mut open.per_session, session);
        }
        if let Some(principal) = self.principal.take() {
            release(&mut open.per_principal, principal);
        }
    }
}

/// The client of a request from `peer`: `peer` itself unless it is a trusted proxy; then the
/// right-most hop of `X-Forwarded-For` (else `Forwarded`) that is not trusted. A hop that
/// cannot be read ends the walk at the hop right of it (the nearest trusted proxy).
fn forwarded_client(peer: IpAddr, trusted: &[IpNet], headers: &http::HeaderMap) -> IpAddr {
    let is_trusted = |addr: &IpAddr| trusted.iter().any(|net| net.contains(addr));
    if !is_trusted(&peer) {
        return peer;
    }
    let xff = headers.get_all("x-forwarded-for");
    let hops: Vec<Option<IpAddr>> = if xff.iter().next().is_some() {
        right_most_hops(xff.iter(), ',', parse_xff_hop)
    } else {
        right_most_hops(
            headers.get_all("forwarded").iter(),
            ',',
            parse_forwarded_hop,
        )
    };
    let mut client = peer;
    for hop in hops {
        match hop {
            Some(addr) if is_trusted(&addr) => client = addr,
            Some(addr) => return addr,
            None => return client,
        }
    }
    client
}

/// Up to [`MAX_HOPS`] hops of the header lines `values` (in order, each a `separator`-list),
/// right-most first; `None` for one that does not parse (a line that is not text is one).
fn right_most_hops<'a>(
    values: impl DoubleEndedIterator<Item = &'a http::HeaderValue>,
    separator: char,
    parse: fn(&str) -> Option<IpAddr>,
) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in values.rev() {
        let Ok(text) = value.to_str() else {
            hops.push(None);
            return hops;
        };
        for hop in text.rsplit(separator) {
            if hops.len() == MAX_HOPS {
                return hops;
            }
            hops.push(parse(hop.trim()).map(|a| a.to_canonical()));
        }
    }
    hops
}

/// An `X-Forwarded-For` element: an address, possibly with a port (`1.2.3.4:80`,
/// `[::1]:80`).
fn parse_xff_hop(hop: &str) -> Option<IpAddr> {
    parse_node(hop)
}

/// A `Forwarded` element (RFC 7239): `for=` among `;`-separated pairs, possibly quoted.
fn parse_forwarded_hop(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_node(value)
    })
}

/// An address with an optional port: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_are_read_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", b"6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        // Not a trusted peer: the header is ignored.
        assert_eq!(forwarded_client(ip("9.9.9.9"), &trusted, &h), ip("9.9.9.9"));
        // Trusted: the right-most untrusted hop, never the client-written left part.
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &trusted, &h),
            ip("1.2.3.4")
        );
        assert_eq!(forwarded_client(ip("::1"), &trusted, &h), ip("1.2.3.4"));
        // Several header lines are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", b"6.6.6.6"),
            ("x-forwarded-for", b"[2001:db8::1]:443"),
        ]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &trusted, &h),
            ip("2001:db8::1")
        );
        // Garbage, `unknown`, bytes that are not text: the nearest trusted proxy.
        for bad in [
            &b"1.2.3.4, garbage"[..],
            b"unknown",
            b"\xff\xfe",
            b"",
            b",,,",
        ] {
            let h = headers(&[("x-forwarded-for", bad)]);
            assert_eq!(
                forwarded_client(ip("10.0.0.1"), &trusted, &h),
                ip("10.0.0.1")
            );
        }
        let h = headers(&[("x-forwarded-for", b"1.2.3.4, nonsense, 10.0.0.7")]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &trusted, &h),
            ip("10.0.0.7")
        );
        // Every hop trusted: the left-most.
        let h = headers(&[("x-forwarded-for", b"10.1.1.1, 10.0.0.2")]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &trusted, &h),
            ip("10.1.1.1")
        );
        // IPv4-mapped IPv6 is the IPv4 address.
        let h = headers(&[("x-forwarded-for", b"::ffff:1.2.3.4")]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &trusted, &h),
            ip("1.2.3.4")
        );
        // A very long header is read from the right, a bounded number of hops.
        let long = format!("1.2.3.4{}", ", 10.0.0.9".repeat(10_000));
        let h = headers(&[("x-forwarded-for", long.as_bytes())]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &trusted, &h),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn forwarded_header_per_rfc_7239() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[(
            "forwarded",
            b"for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.3;by=10.0.0.1",
        )]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &trusted, &h),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("forwarded", b"for=_hidden, for=10.0.0.3")]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &trusted, &h),
            ip("10.0.0.3")
        );
        // X-Forwarded-For, when present, wins.
        let h = headers(&[
            ("forwarded", b"for=6.6.6.6"),
            ("x-forwarded-for", b"1.2.3.4"),
        ]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &trusted, &h),
            ip("1.2.3.4")
        );
    }

    #[tokio::test]
    async fn refusal_delays_grow_per_address_with_jitter_and_stay_bounded() {
        let limiter = Limiter::new(
            Limits::new()
                .max_connections_per_ip(0)
                .refusal_retry(Duration::from_millis(1000), Duration::from_millis(8000)),
        );
        let a = Some(ip("1.1.1.1"));
        let delays: Vec<Duration> = (0..6)
            .map(|_| limiter.admit(a).unwrap_err().retry)
            .collect();
        for (i, d) in delays.iter().enumerate() {
            let step = Duration::from_millis(1000 << i.min(3));
            assert!(*d >= step / 2 && *d <= step, "refusal {i}: {d:?}");
        }
        // Growing while the steps double (from the fourth on, each is jittered below the cap).
        assert!(delays[..4].windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        // Another address starts from the base; first delays of many addresses vary.
        let firsts: Vec<Duration> = (0..20u8)
            .map(|i| {
                let refused = limiter.admit(Some(IpAddr::from([2, 2, 2, i]))).unwrap_err();
                assert_eq!(refused.reason, "max_connections_per_ip");
                refused.retry
            })
            .collect();
        assert!(firsts.iter().all(|d| *d <= Duration::from_millis(1000)));
        assert!(
            firsts.iter().any(|d| *d != firsts[0]),
            "no jitter: {firsts:?}"
        );
    }

    #[tokio::test]
    async fn counts_are_released_with_the_admission() {
        let limiter = Limiter::new(
            Limits::new()
                .max_connections(3)
                .max_connections_per_ip(2)
                .max_connections_per_session(1)
                .max_connections_per_principal(1),
        );
        let a = Some(ip("1.1.1.1"));
        let first = limiter.admit(a).unwrap();
        let second = limiter.admit(a).unwrap();
        assert_eq!(
            limiter.admit(a).unwrap_err().reason,
            "max_connections_per_ip"
        );
        let mut third = limiter.admit(Some(ip("3.3.3.3"))).unwrap();
        assert_eq!(limiter.admit(None).unwrap_err().reason, "max_connections");
        drop(first);
        let s = SessionId::random();
        let alice = Identity::principal("alice");
        limiter.admit_session(&mut third, s, &alice).unwrap();
        let mut again = limiter.admit(a).unwrap();
        assert_eq!(
            limiter
                .admit_session(&mut again, s, &Identity::anonymous())
                .unwrap_err()
                .reason,
            "max_connections_per_session"
        );
        assert_eq!(
            limiter
                .admit_session(&mut again, SessionId::random(), &alice)
                .unwrap_err()
                .reason,
            "max_connections_per_principal"
        );
        drop((second, third, again));
        let open = limiter.open.lock();
        assert_eq!(open.total, 0);
        assert!(open.per_ip.is_empty() && open.per_session.is_empty());
        assert!(open.per_principal.is_empty());
    }

    #[tokio::test]
    async fn publish_rate_per_principal_or_address() {
        let limiter = Limiter::new(Limits::new().publish_rate(NonZeroU32::new(2).unwrap()));
        let alice = Identity::principal("alice");
        let a = Some(ip("1.1.1.1"));
        assert!(limiter.check_publish(&alice, a).is_ok());
        assert!(limiter.check_publish(&alice, Some(ip("2.2.2.2"))).is_ok());
        let wait = limiter.check_publish(&alice, a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Anonymous publishers are counted by address.
        assert!(limiter.check_publish(&Identity::anonymous(), a).is_ok());
        assert!(limiter.check_publish(&Identity::anonymous(), a).is_ok());
        assert!(limiter.check_publish(&Identity::anonymous(), a).is_err());
        assert!(limiter.check_publish(&Identity::anonymous(), None).is_ok());
    }
}
