//! Keyed rate limits, by `governor`'s GCRA limiter: each key (a user on connect, a client
//! address on the callback) may make `burst` requests at once and then one every
//! `period / burst`. Owns the limiter, the bound on how many keys it tracks and what counts
//! as one client ([`client_key`]); the route decides what to answer. The map is
//! bounded: when it is full, users whose allowance has filled up again (the same as no entry)
//! are dropped, and if that is not enough the whole map starts afresh (every user merely gets
//! a full allowance back; it takes [`MAX_TRACKED`] users consenting within one period).

use std::{
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::{PoisonError, RwLock},
    time::Duration,
};

use governor::{
    Quota,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};

/// Consents a user may start per minute on `POST /api/integrations/google/connect`.
pub const CONNECTS_PER_MINUTE: u32 = 10;
/// Callbacks one client address may make per minute on the unauthenticated
/// `GET /api/integrations/google/callback`: a browser makes one per consent, so this is far
/// above any person's use (a whole office behind one NAT included) and still bounds a flood.
pub const CALLBACKS_PER_MINUTE: u32 = 60;
/// Most keys tracked at once.
const MAX_TRACKED: usize = 100_000;

type Keyed<C> = governor::RateLimiter<
    String,
    DashMapStateStore<String>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

/// Allowances keyed by user id.
pub struct RateLimiter<C: Clock + Clone = DefaultClock> {
    /// Read-locked by every check (the map shards its own locking); write-locked only to
    /// start afresh when the map is full.
    limiter: RwLock<Keyed<C>>,
    quota: Quota,
    clock: C,
    max_tracked: usize,
}

impl RateLimiter {
    /// `burst` requests at once, refilled evenly over `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        Self::with_clock(burst, period, MAX_TRACKED, DefaultClock::default())
    }

    /// The limit of the connect route.
    pub fn for_connect() -> Self {
        Self::new(CONNECTS_PER_MINUTE, Duration::from_secs(60))
    }

    /// The limit of the callback route, per [`client_key`].
    pub fn for_callback() -> Self {
        Self::new(CALLBACKS_PER_MINUTE, Duration::from_secs(60))
    }
}

/// What a per-client limit counts against, from the connection's peer address: the peer
/// itself, unless it is on loopback or a private network. Such a peer is the reverse proxy or
/// load balancer in front of the service (or the operator's own tools): its one address
/// carries every user, so counting against it would make the limit one for the whole
/// service, and one client's flood would refuse everybody. For it, the key is the last entry
/// of `X-Forwarded-For`, the one that proxy appended (entries before it are whatever the
/// client sent); a client on the internet reaching the service directly has a public address,
/// and its `X-Forwarded-For` is ignored. `None` (not limited): no peer, or a private peer
/// naming no client address. An IPv6 client counts by its /64, which one subscriber usually
/// holds whole. Keys are at most an address long, and the limiter bounds how many it keeps.
pub fn client_key(peer: Option<IpAddr>, headers: &http::HeaderMap) -> Option<String> {
    let peer = canonical(peer?);
    let client = if is_local(peer) {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()?
            .to_str()
            .ok()?
            .rsplit(',')
            .next()?
            .trim()
            .parse::<IpAddr>()
            .ok()?;
        canonical(last)
    } else {
        peer
    };
    Some(match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !(u128::MAX >> 64);
            format!("{}/64", Ipv6Addr::from(bits))
        }
    })
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, private, link-local, shared (100.64.0.0/10, carrier and cloud NAT) and unique
/// local addresses: where a proxy in front of the service sits, never a browser on the internet.
fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    fn with_clock(burst: u32, period: Duration, max_tracked: usize, clock: C) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let every = (period / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(every)
            .expect("a period above zero")
            .allow_burst(burst);
        Self {
            limiter: RwLock::new(Keyed::dashmap_with_clock(quota, clock.clone())),
            quota,
            clock,
            max_tracked: max_tracked.max(1),
        }
    }

    /// Takes one request from `key`'s allowance; `Err(wait)` when none is left, `wait` being
    /// how long until one is.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.tracked() >= self.max_tracked {
            self.make_room();
        }
        let limiter = self.limiter.read().unwrap_or_else(PoisonError::into_inner);
        limiter
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn make_room(&self) {
        let mut limiter = self.limiter.write().unwrap_or_else(PoisonError::into_inner);
        // Another check may have made room while this one waited for the lock.
        if limiter.len() < self.max_tracked {
            return;
        }
        limiter.retain_recent();
        if limiter.len() >= self.max_tracked {
            *limiter = Keyed::dashmap_with_clock(self.quota, self.clock.clone());
        }
        limiter.shrink_to_fit();
    }

    /// Users tracked right now.
    pub fn tracked(&self) -> usize {
        self.limiter
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn burst_then_refill_per_user() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(3, Duration::from_secs(3), 100, clock.clone());
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        // Another user has an allowance of their own.
        assert!(limiter.check("b").is_ok());
        // One second later one request is allowed again, and only one.
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
    }

    #[test]
    fn the_map_stays_bounded() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(2, Duration::from_secs(60), 100, clock.clone());
        for i in 0..1000 {
            let _ = limiter.check(&format!("user-{i}"));
            assert!(limiter.tracked() <= 100);
        }
        // Full allowances are swept first: after a refill, the map empties out as users come.
        clock.advance(Duration::from_secs(120));
        assert!(limiter.check("new").is_ok());
        assert!(limiter.tracked() <= 2, "{}", limiter.tracked());
    }

    fn forwarded(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn a_client_is_its_address_or_what_a_local_proxy_says() {
        let none = http::HeaderMap::new();
        let key = |peer: &str, headers: &http::HeaderMap| {
            client_key(Some(peer.parse().unwrap()), headers)
        };
        // A public peer is the client, whatever it claims to forward.
        assert_eq!(key("203.0.113.9", &none).as_deref(), Some("203.0.113.9"));
        assert_eq!(
            key("203.0.113.9", &forwarded("198.51.100.1")).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            key("::ffff:203.0.113.9", &none).as_deref(),
            Some("203.0.113.9")
        );
        // IPv6 by its /64: one subscriber's addresses count as one.
        assert_eq!(
            key("2001:db8:1:2:aaaa::1", &none),
            key("2001:db8:1:2:bbbb::2", &none)
        );
        assert_ne!(key("2001:db8:1:2::1", &none), key("2001:db8:1:3::1", &none));
        // A local peer (a proxy) names the client in the last X-Forwarded-For entry; entries
        // before it are the client's own claims.
        for proxy in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert_eq!(
                key(proxy, &forwarded("1.2.3.4, 198.51.100.7")).as_deref(),
                Some("198.51.100.7"),
                "{proxy}"
            );
            assert_eq!(key(proxy, &none), None, "{proxy}");
            assert_eq!(key(proxy, &forwarded("not an address")), None, "{proxy}");
        }
        assert_eq!(client_key(None, &forwarded("198.51.100.7")), None);
    }

    #[test]
    fn the_connect_limit_waits_whole_refills() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(
            CONNECTS_PER_MINUTE,
            Duration::from_secs(60),
            MAX_TRACKED,
            clock.clone(),
        );
        for _ in 0..CONNECTS_PER_MINUTE {
            assert!(limiter.check("alice").is_ok());
        }
        let wait = limiter.check("alice").unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        clock.advance(Duration::from_secs(6));
        assert!(limiter.check("alice").is_ok());
    }
}
