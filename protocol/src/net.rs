//! Addresses as services see them behind proxies: trusted proxy addresses and networks, and the
//! client address a request came from (`X-Forwarded-For`, believed only from trusted proxies).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// An address or network (`10.0.0.7`, `10.0.0.0/8`, `fd00::/8`), as configuration lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not an IP address or network (address/prefix)")]
pub struct IpNetError(String);

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpNetError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
                // Digits only: "+8" and " 8" are not prefixes.
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let prefix: u8 = p.parse().map_err(|_| bad())?;
                (addr, prefix)
            }
            None => {
                let addr: IpAddr = s.trim().parse().map_err(|_| bad())?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl IpNet {
    /// Whether `ip` is in this network. An IPv4 address written as IPv6 (`::ffff:a.b.c.d`)
    /// matches the IPv4 network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether any of `nets` holds `ip`.
pub fn any_contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

/// The client a request came from: the peer, unless the peer is a trusted proxy; then the
/// rightmost `X-Forwarded-For` hop that is not a trusted proxy (each proxy appends the address
/// it saw, so hops to the left of an untrusted one are the client's own claims). When every hop
/// is trusted, the leftmost: the client is itself inside a trusted network, and the proxies'
/// own address would make all such clients one.
pub fn client_addr<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    if !any_contains(trusted, peer) {
        return peer;
    }
    let hops: Vec<IpAddr> =
        forwarded_for.flat_map(|v| v.split(',')).filter_map(|s| s.trim().parse().ok()).collect();
    hops.iter()
        .rev()
        .find(|ip| !any_contains(trusted, **ip))
        .or_else(|| hops.first())
        .copied()
        .unwrap_or(peer)
}

/// What a per-address limit counts an address as: an IPv4 address (also written as IPv6)
/// itself, an IPv6 address by its /64 (one host can take any address of its /64).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let n: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")));
        let one: IpNet = "192.168.1.5".parse().unwrap();
        assert!(one.contains(ip("192.168.1.5")) && !one.contains(ip("192.168.1.6")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert_eq!(v6.to_string(), "fd00::/8");
        for bad in ["", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/+8", "x/8", "::/129", "10.0.0.0/8/8"]
        {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = ["6.6.6.6, 1.2.3.4", "10.0.0.9"];
        // From a trusted proxy: the rightmost untrusted hop.
        assert_eq!(client_addr(ip("10.0.0.1"), xff.iter().copied(), &trusted), ip("1.2.3.4"));
        // From anyone else: the peer, whatever the header says.
        assert_eq!(client_addr(ip("5.5.5.5"), xff.iter().copied(), &trusted), ip("5.5.5.5"));
        // A trusted peer with no header is itself the client.
        assert_eq!(client_addr(ip("10.0.0.1"), std::iter::empty(), &trusted), ip("10.0.0.1"));
        // A client inside a trusted network, behind the proxy: itself, not the proxy.
        assert_eq!(client_addr(ip("10.0.0.1"), ["10.7.7.7"].into_iter(), &trusted), ip("10.7.7.7"));
    }

    #[test]
    fn limits_count_an_ipv6_host_by_its_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("2001:db8:1:2:ffff::9")), limit_key(ip("2001:db8:1:2::1")));
        assert_ne!(limit_key(ip("2001:db8:1:3::1")), limit_key(ip("2001:db8:1:2::1")));
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(limit_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }
}
