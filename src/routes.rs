//! Which route a request takes: routes that name a host come before routes
//! that do not; among those that match, the longest path prefix wins.
//! Pure matching over any route type, so `config` checks what `proxy`
//! serves with the same code.

/// The host a route answers for: `example.com`, or `*.example.com` for
/// every name ending in `.example.com` (not `example.com` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix, with its leading dot: `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// Parses a `host` key: a DNS name or IP address, or `*.` and a name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']')
            });
        if !valid {
            return Err(format!(
                "{text:?} is not a host name (e.g. example.com or *.example.com)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Whether `host` (a request's host, any case, with or without a
    /// port) is one this pattern names.
    pub fn matches(&self, host: &str) -> bool {
        let host = without_port(host);
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Whether `path` lies under `prefix`, by whole segments: `/api` covers
/// `/api` and `/api/x`, not `/apis`; `/live/` covers `/live/x` only.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A request's host or authority without its port.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal keeps its brackets: `[::1]:8443` → `[::1]`.
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    }
}

/// Routes in matching order.
#[derive(Debug)]
pub struct RouteTable<R> {
    routes: Vec<(Option<HostPattern>, String, R)>,
}

impl<R> RouteTable<R> {
    /// Orders `routes` (host pattern, path prefix, route) once: with a host
    /// first, then longer prefixes first; equal ones keep their order.
    pub fn new(mut routes: Vec<(Option<HostPattern>, String, R)>) -> Self {
        routes.sort_by_key(|(host, path, _)| (host.is_none(), std::cmp::Reverse(path.len())));
        RouteTable { routes }
    }

    /// The route for a request to `host` (as the request gives it) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&R> {
        self.routes
            .iter()
            .find(|(pattern, prefix, _)| {
                pattern.as_ref().is_none_or(|p| p.matches(host)) && path_matches(prefix, path)
            })
            .map(|(_, _, route)| route)
    }

    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.routes.iter().map(|(_, _, route)| route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(Option<&str>, &str, &'static str)]) -> RouteTable<&'static str> {
        RouteTable::new(
            routes
                .iter()
                .map(|&(host, path, name)| {
                    (
                        host.map(|h| HostPattern::parse(h).unwrap()),
                        path.to_owned(),
                        name,
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn hosts_come_first_then_the_longest_prefix() {
        let routes = table(&[
            (None, "/", "app"),
            (None, "/live/", "live"),
            (None, "/live/admin", "live-admin"),
            (Some("api.example.com"), "/", "api"),
            (Some("*.example.com"), "/live/", "wild-live"),
        ]);
        assert_eq!(routes.find("example.com", "/index.html"), Some(&"app"));
        assert_eq!(routes.find("example.com", "/live/x"), Some(&"live"));
        assert_eq!(routes.find("example.com", "/live"), Some(&"app"));
        assert_eq!(
            routes.find("example.com", "/live/admin/x"),
            Some(&"live-admin")
        );
        assert_eq!(
            routes.find("example.com", "/live/administrator"),
            Some(&"live")
        );
        // A route with a host wins even with a shorter prefix.
        assert_eq!(
            routes.find("api.example.com", "/live/x"),
            Some(&"wild-live")
        );
        assert_eq!(routes.find("api.example.com", "/x"), Some(&"api"));
        assert_eq!(
            routes.find("www.example.com", "/live/x"),
            Some(&"wild-live")
        );
        assert_eq!(routes.find("www.example.com", "/x"), Some(&"app"));
    }

    #[test]
    fn no_route_matches_without_a_catch_all() {
        let routes = table(&[(None, "/api", "api"), (Some("example.com"), "/", "site")]);
        assert_eq!(routes.find("other.org", "/"), None);
        assert_eq!(routes.find("other.org", "/apis"), None);
        assert_eq!(routes.find("other.org", "/api"), Some(&"api"));
        assert_eq!(routes.find("example.com", "/anything"), Some(&"site"));
    }

    #[test]
    fn a_wildcard_does_not_match_the_bare_name() {
        let wild = HostPattern::parse("*.Example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        assert_eq!(wild.to_string(), "*.example.com");
        for bad in ["", "*.", "exa mple.com", "a/b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hosts_match_without_their_port_and_case() {
        let exact = HostPattern::parse("example.com").unwrap();
        assert!(exact.matches("Example.COM:8443"));
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("example.com.evil"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("API.example.com:443"));
        assert_eq!(without_port("[::1]:8443"), "[::1]");
        assert_eq!(without_port("127.0.0.1"), "127.0.0.1");
    }
}
