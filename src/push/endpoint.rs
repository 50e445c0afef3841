//! A subscription's endpoint: the URL Herald will POST to, checked
//! against `push.allowed_endpoint_hosts` before anything is stored. The
//! allow-list is the SSRF guard: Herald sends requests only to hosts the
//! operator named, never to an address a browser (or anyone with a token)
//! chose.

use http::Uri;

/// Longest endpoint accepted. Real ones are 150 to 500 bytes.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// Why an endpoint is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("the endpoint is not a valid absolute URL")]
    Malformed,
    #[error("the endpoint is longer than {MAX_ENDPOINT_BYTES} bytes")]
    TooLong,
    #[error("the endpoint must be https:// (http:// only with push.allow_http_endpoints)")]
    Scheme,
    #[error("the endpoint's host {0} is not in push.allowed_endpoint_hosts")]
    HostNotAllowed(String),
}

/// A checked endpoint and the push service it belongs to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub uri: Uri,
    /// The endpoint's origin, `scheme://host:port` with the port always
    /// written: the VAPID `aud` (RFC 8292 §2: the origin of the push
    /// resource, port included) and the unit of connection reuse, of
    /// requests in flight and of metrics.
    pub origin: String,
}

/// Parses `endpoint` and checks it against the allow-list.
pub fn check(
    endpoint: &str,
    allowed: &[String],
    allow_http: bool,
) -> Result<Endpoint, EndpointError> {
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(EndpointError::TooLong);
    }
    let uri: Uri = endpoint.parse().map_err(|_| EndpointError::Malformed)?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(EndpointError::Malformed);
    };
    let default_port = match scheme {
        "https" => 443,
        "http" if allow_http => 80,
        _ => return Err(EndpointError::Scheme),
    };
    // Credentials in the URL would be sent to the push service as given.
    if authority.as_str().contains('@') {
        return Err(EndpointError::Malformed);
    }
    let host = authority.host().to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(default_port);
    if host.is_empty() {
        return Err(EndpointError::Malformed);
    }
    if !allowed
        .iter()
        .any(|p| host_matches(p, &host, port, default_port))
    {
        return Err(EndpointError::HostNotAllowed(match authority.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }));
    }
    let origin = format!("{scheme}://{host}:{port}");
    Ok(Endpoint { uri, origin })
}

/// The origin as push services compare it in `aud`: the port is left out
/// when it is the scheme's default (a browser's serialisation of an
/// origin), written otherwise.
pub fn audience(origin: &str) -> &str {
    origin
        .strip_suffix(":443")
        .filter(|o| o.starts_with("https://"))
        .or_else(|| {
            origin
                .strip_suffix(":80")
                .filter(|o| o.starts_with("http://"))
        })
        .unwrap_or(origin)
}

/// Whether `pattern` is a valid `allowed_endpoint_hosts` entry:
/// `host`, `*.domain`, either with an optional `:port`.
pub fn is_host_pattern(pattern: &str) -> bool {
    let (host, port) = split_port(pattern);
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return false;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn split_port(pattern: &str) -> (&str, Option<&str>) {
    match pattern.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (pattern, None),
    }
}

/// `*.example.com` matches `a.example.com` and `a.b.example.com`, not
/// `example.com`; an entry without a port matches any port.
fn host_matches(pattern: &str, host: &str, port: u16, default_port: u16) -> bool {
    let (pattern_host, pattern_port) = split_port(pattern);
    if let Some(p) = pattern_port {
        let want = p.parse::<u16>().unwrap_or(default_port);
        if want != port {
            return false;
        }
    }
    let pattern_host = pattern_host.to_ascii_lowercase();
    match pattern_host.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => host == pattern_host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        [
            "*.push.services.mozilla.com",
            "fcm.googleapis.com",
            "127.0.0.1:9999",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn allowed_hosts_and_origins() {
        let e = check("https://fcm.googleapis.com/fcm/send/abc", &allowed(), false).unwrap();
        assert_eq!(e.origin, "https://fcm.googleapis.com:443");
        assert_eq!(audience(&e.origin), "https://fcm.googleapis.com");
        let e = check(
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            &allowed(),
            false,
        )
        .unwrap();
        assert_eq!(
            audience(&e.origin),
            "https://updates.push.services.mozilla.com"
        );
        let e = check("http://127.0.0.1:9999/push/1", &allowed(), true).unwrap();
        assert_eq!(audience(&e.origin), "http://127.0.0.1:9999");
    }

    #[test]
    fn refusals() {
        let a = allowed();
        assert_eq!(
            check("https://push.services.mozilla.com/x", &a, false).unwrap_err(),
            EndpointError::HostNotAllowed("push.services.mozilla.com".into())
        );
        assert_eq!(
            check("https://evilfcm.googleapis.com.attacker.net/x", &a, false).unwrap_err(),
            EndpointError::HostNotAllowed("evilfcm.googleapis.com.attacker.net".into())
        );
        assert_eq!(
            check("http://fcm.googleapis.com/x", &a, false).unwrap_err(),
            EndpointError::Scheme
        );
        assert_eq!(
            check("http://127.0.0.1:9998/push/1", &a, true).unwrap_err(),
            EndpointError::HostNotAllowed("127.0.0.1:9998".into())
        );
        assert_eq!(
            check("https://user:pw@fcm.googleapis.com/x", &a, false).unwrap_err(),
            EndpointError::Malformed
        );
        assert_eq!(
            check("/relative", &a, false).unwrap_err(),
            EndpointError::Malformed
        );
        assert_eq!(
            check("ftp://fcm.googleapis.com/x", &a, true).unwrap_err(),
            EndpointError::Scheme
        );
        let long = format!(
            "https://fcm.googleapis.com/{}",
            "a".repeat(MAX_ENDPOINT_BYTES)
        );
        assert_eq!(check(&long, &a, false).unwrap_err(), EndpointError::TooLong);
    }

    #[test]
    fn patterns() {
        for ok in [
            "fcm.googleapis.com",
            "*.notify.windows.com",
            "127.0.0.1",
            "localhost:8443",
        ] {
            assert!(is_host_pattern(ok), "{ok}");
        }
        for bad in [
            "",
            "*.",
            "https://x.com",
            "x.com/path",
            "x..com",
            "x.com:99999",
            "*x.com",
        ] {
            assert!(!is_host_pattern(bad), "{bad}");
        }
    }
}
