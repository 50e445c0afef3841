//! The client's address behind a load balancer: from a peer listed in
//! `http.trusted_proxies` Herald takes the proxy's word for it, from a
//! PROXY protocol header (`http.proxy_protocol`, read first, before the
//! request head) or from `X-Forwarded-For` (in the head); from any other
//! peer neither is read, so a client cannot pick the address its limits
//! are counted against.
//!
//! `X-Forwarded-For` is read from the right: each proxy appends the
//! address it received the request from, so the entries a trusted proxy
//! wrote are at the end, and the right-most entry that is not itself a
//! trusted proxy is the client (anything left of it was written by the
//! client or by proxies Herald does not know, and could be made up). An
//! entry that is not an address ends the walk: the address right of it is
//! taken.
//!
//! What each limit can count, and when (see `docs/operations.md`):
//! `limits.max_pending_connections_per_ip` applies at accept, before any
//! byte is read: a trusted proxy's own address is exempt from it (every
//! client shares it), and with the PROXY protocol the client's address
//! from the header is counted instead, before the head is read;
//! `X-Forwarded-For` comes with the head, when waiting for it is over, so
//! behind an HTTP proxy only `limits.max_pending_connections` (the node's
//! queue) bounds connections that have not sent their head.
//! `limits.max_connections_per_ip` and `replay.max_concurrent_per_ip`
//! count the forwarded address.

use std::net::IpAddr;

use http::{HeaderMap, StatusCode};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::ApiError;
use crate::config::HttpConfig;

/// Most `X-Forwarded-For` entries looked at, from the right. Past them the
/// last one looked at is taken: a chain of more trusted proxies than this
/// is not a deployment, and the walk is bounded work before anything is
/// authenticated.
const MAX_FORWARDED_HOPS: usize = 16;

/// Longest PROXY header read: the protocol's own advice for a receiver's
/// buffer (a v1 line is at most 107 bytes; a v2 header is 16 bytes, up to
/// 216 of addresses, and TLVs). A longer one is `400 bad_request`.
pub const MAX_PROXY_HEADER: usize = 536;

/// The longest v1 header, CRLF included (the protocol's own bound).
const MAX_V1_HEADER: usize = 107;

/// The v1 header's first bytes.
const V1_PREFIX: &[u8] = b"PROXY ";

/// `http.trusted_proxies` and `http.proxy_protocol`, parsed once.
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    proxy_protocol: bool,
}

/// What a connection from a trusted proxy began with.
pub struct ProxyPreface {
    /// Whether there was a PROXY header.
    pub present: bool,
    /// The client's address from a PROXY header; `None` without one, or
    /// for a header that names none (v1 `UNKNOWN`, v2 `LOCAL`: the proxy's
    /// own health check).
    pub source: Option<IpAddr>,
    /// What was read after the header (or, without one, everything read):
    /// the start of the request head.
    pub rest: Vec<u8>,
}

impl TrustedProxies {
    /// From a validated config (an entry that does not parse is left out;
    /// `Config::validate` refuses it before this).
    pub fn new(config: &HttpConfig) -> TrustedProxies {
        TrustedProxies {
            nets: config.trusted_proxy_nets().unwrap_or_default(),
            proxy_protocol: config.proxy_protocol,
        }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether a connection from `peer` is read for a PROXY header first:
    /// with `http.proxy_protocol`, one from a trusted proxy may carry one,
    /// and one from any other peer is checked so that a header is refused
    /// by name rather than parsed as a strange request line.
    pub fn reads_proxy_header(&self) -> bool {
        self.proxy_protocol
    }

    /// The client of a request that reached Herald from `hop` (the peer,
    /// or the source of its PROXY header): `hop` itself unless it is a
    /// trusted proxy, else the right-most address of `X-Forwarded-For`
    /// that is not.
    pub fn client_of(&self, hop: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = hop.to_canonical();
        if self.nets.is_empty() || !self.trusts(client) {
            return client;
        }
        let mut looked = 0;
        // Several header fields are one list, in order.
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for entry in text.rsplit(',') {
                looked += 1;
                if looked > MAX_FORWARDED_HOPS {
                    return client;
                }
                let Some(ip) = parse_entry(entry.trim()) else {
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port
/// (`1.2.3.4:80`, `[::1]:80`) or in brackets (`[::1]`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Reads a PROXY header (v1 or v2) if the connection starts with one, at
/// most [`MAX_PROXY_HEADER`] bytes. `Ok(None)`: the client closed first.
/// A malformed header, or one too long, is `400 bad_request`. No deadline
/// here: the caller's is the head's (`http.head_timeout`).
pub async fn read_proxy_header(
    stream: &mut (impl AsyncRead + Unpin),
) -> Result<Option<ProxyPreface>, ApiError> {
    let mut buf = Vec::with_capacity(MAX_PROXY_HEADER);
    loop {
        let room = MAX_PROXY_HEADER - buf.len();
        let mut limited = (&mut *stream).take(room as u64);
        match limited.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
        if !could_be_proxy_header(&buf) {
            return Ok(Some(ProxyPreface {
                present: false,
                source: None,
                rest: buf,
            }));
        }
        if !is_proxy_header(&buf) {
            // A prefix of the signature so far: read on.
            continue;
        }
        let parsed = ppp::HeaderResult::parse(&buf);
        if buf.starts_with(V1_PREFIX) {
            // A v1 line is whole at its CRLF, and never longer than 107
            // bytes: what the parser still calls incomplete then is not
            // a header.
            let line_end = buf.windows(2).position(|w| w == b"\r\n");
            let whole = line_end.is_some() || buf.len() >= MAX_V1_HEADER;
            if whole && ppp::PartialResult::is_incomplete(&parsed) {
                return Err(malformed(&"not a PROXY v1 line"));
            }
        }
        if ppp::PartialResult::is_incomplete(&parsed) {
            if buf.len() >= MAX_PROXY_HEADER {
                return Err(ApiError::bad_request(
                    "bad_request",
                    format!("the PROXY protocol header is longer than {MAX_PROXY_HEADER} bytes"),
                ));
            }
            continue;
        }
        let (source, len) = match parsed {
            ppp::HeaderResult::V1(Ok(header)) => {
                let source = match header.addresses {
                    ppp::v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
                    ppp::v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
                    ppp::v1::Addresses::Unknown => None,
                };
                (source, header.header.len())
            }
            ppp::HeaderResult::V2(Ok(header)) => {
                let source = match (&header.command, &header.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => Some(IpAddr::V4(a.source_address)),
                    (_, ppp::v2::Addresses::IPv6(a)) => Some(IpAddr::V6(a.source_address)),
                    _ => None,
                };
                (source, header.len())
            }
            ppp::HeaderResult::V1(Err(e)) => return Err(malformed(&e)),
            ppp::HeaderResult::V2(Err(e)) => return Err(malformed(&e)),
        };
        let rest = buf.split_off(len.min(buf.len()));
        return Ok(Some(ProxyPreface {
            present: true,
            source: source.map(|ip| ip.to_canonical()),
            rest,
        }));
    }
}

fn malformed(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("malformed PROXY protocol header: {e}"),
    )
}

/// Whether `bytes` are (so far) the start of a PROXY header.
fn could_be_proxy_header(bytes: &[u8]) -> bool {
    let starts = |prefix: &[u8]| {
        let n = bytes.len().min(prefix.len());
        bytes[..n] == prefix[..n]
    };
    starts(V1_PREFIX) || starts(ppp::v2::PROTOCOL_PREFIX)
}

/// Whether `bytes` begin with a whole PROXY signature.
fn is_proxy_header(bytes: &[u8]) -> bool {
    bytes.starts_with(V1_PREFIX) || bytes.starts_with(ppp::v2::PROTOCOL_PREFIX)
}

/// The refusal of a PROXY header from a peer that is not a trusted proxy.
pub fn untrusted_proxy_header(peer: IpAddr) -> ApiError {
    ApiError::bad_request(
        "bad_request",
        format!(
            "a PROXY protocol header from {peer}, which is not in http.trusted_proxies: only a trusted proxy may say where a connection comes from"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(&HttpConfig {
            trusted_proxies: nets.iter().map(|s| s.to_string()).collect(),
            ..HttpConfig::default()
        })
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let t = trusted(&["10.0.0.0/8", "192.168.1.1"]);
        let proxy = ip("10.0.0.5");
        // The client wrote a made-up address first; the proxies appended.
        let h = xff(&["6.6.6.6, 203.0.113.7, 10.1.1.1"]);
        assert_eq!(t.client_of(proxy, &h), ip("203.0.113.7"));
        // Split over several fields, in order.
        let h = xff(&["6.6.6.6", "203.0.113.7", "192.168.1.1"]);
        assert_eq!(t.client_of(proxy, &h), ip("203.0.113.7"));
        // Ports and brackets.
        let h = xff(&["[2001:db8::1]:443"]);
        assert_eq!(t.client_of(proxy, &h), ip("2001:db8::1"));
        let h = xff(&["203.0.113.9:5000"]);
        assert_eq!(t.client_of(proxy, &h), ip("203.0.113.9"));
        // No header: the proxy itself.
        assert_eq!(t.client_of(proxy, &HeaderMap::new()), proxy);
        // Everything trusted: the left-most.
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(t.client_of(proxy, &h), ip("10.9.9.9"));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["203.0.113.7"]);
        assert_eq!(t.client_of(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        let none = trusted(&[]);
        assert_eq!(none.client_of(ip("10.0.0.5"), &h), ip("10.0.0.5"));
    }

    #[test]
    fn garbage_and_long_chains_stop_the_walk() {
        let t = trusted(&["10.0.0.0/8"]);
        let proxy = ip("10.0.0.5");
        let h = xff(&["203.0.113.7, unknown, 10.1.1.1"]);
        assert_eq!(t.client_of(proxy, &h), ip("10.1.1.1"));
        let chain = vec!["10.2.2.2"; 100].join(", ");
        let h = xff(&[&format!("203.0.113.7, {chain}")]);
        assert_eq!(t.client_of(proxy, &h), ip("10.2.2.2"));
        // A v4-mapped peer is its v4 address.
        assert!(t.trusts(ip("::ffff:10.0.0.5")));
    }

    fn read(bytes: &[u8]) -> Result<Option<ProxyPreface>, ApiError> {
        let mut input = bytes;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_proxy_header(&mut input))
    }

    #[test]
    fn proxy_headers_v1_and_v2_name_the_client() {
        let got = read(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(got.source, Some(ip("203.0.113.7")));
        assert_eq!(got.rest, b"GET / HTTP/1.1\r\n");
        let got = read(b"PROXY UNKNOWN\r\nGET").unwrap().unwrap();
        assert_eq!(
            (got.present, got.source, &got.rest[..]),
            (true, None, &b"GET"[..])
        );
        let mut v2 = ppp::v2::PROTOCOL_PREFIX.to_vec();
        // PROXY command, TCP over IPv4, 12 bytes of addresses.
        v2.extend_from_slice(&[0x21, 0x11, 0, 12]);
        v2.extend_from_slice(&[198, 51, 100, 4, 10, 0, 0, 1, 0x15, 0xb3, 0, 80]);
        v2.extend_from_slice(b"GET");
        let got = read(&v2).unwrap().unwrap();
        assert_eq!(got.source, Some(ip("198.51.100.4")));
        assert_eq!(got.rest, b"GET");
    }

    #[test]
    fn no_header_hands_everything_on_and_bad_ones_are_refused() {
        let got = read(b"GET /sse HTTP/1.1\r\n").unwrap().unwrap();
        assert!(!got.present);
        assert_eq!(
            (got.source, &got.rest[..]),
            (None, &b"GET /sse HTTP/1.1\r\n"[..])
        );
        let e = read(b"PROXY TCP4 nonsense\r\n").err().unwrap();
        assert_eq!(e.code, "bad_request");
        assert!(e.message.contains("PROXY"), "{}", e.message);
        let e = read(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 600]].concat())
            .err()
            .unwrap();
        assert!(e.message.contains("PROXY"), "{}", e.message);
        let mut v2 = ppp::v2::PROTOCOL_PREFIX.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        v2.extend_from_slice(&[0; 600]);
        let e = read(&v2).err().unwrap();
        assert!(e.message.contains("536"), "{}", e.message);
        assert!(could_be_proxy_header(b"PRO") && !could_be_proxy_header(b"POST"));
    }
}
