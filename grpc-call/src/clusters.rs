//! `--grpc-cluster NAME=URL`: which target each upstream name of `proxy_grpc_call` reaches.

use std::collections::BTreeMap;

/// One target: where calls to an upstream name go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    /// `http://host:port` (plaintext HTTP/2) or `https://host:port` (TLS, system roots).
    pub url: String,
    /// PEM roots to verify an https target with instead of the system's (tests, private CAs).
    pub ca_pem: Option<Vec<u8>>,
}

impl Cluster {
    pub fn tls(&self) -> bool {
        self.url.starts_with("https://")
    }
}

/// The validated mapping, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clusters(pub BTreeMap<String, Cluster>);

impl Clusters {
    /// From `NAME=URL` arguments; a repeated name or an invalid argument is an error naming it.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Clusters, String> {
        let mut out = Clusters::default();
        for a in args {
            let a = a.as_ref();
            let named = |why: String| format!("--grpc-cluster {a:?}: {why}");
            out.add(parse_cluster(a).map_err(named)?).map_err(named)?;
        }
        Ok(out)
    }

    /// Adds one target; a name given twice is an error.
    pub fn add(&mut self, c: Cluster) -> Result<(), String> {
        if self.0.contains_key(&c.name) {
            return Err(format!("{} is given twice", c.name));
        }
        self.0.insert(c.name.clone(), c);
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<&Cluster> {
        self.0.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Checks one `NAME=URL` (the error says what is wrong with it): NAME is 1-255 bytes of letters, digits and `._-:` (an Envoy cluster
/// name as a filter spells it); URL is `http://` or `https://`, a host, an optional port, and
/// no path, query or credentials.
pub fn parse_cluster(arg: &str) -> Result<Cluster, String> {
    let bad = |why: &str| Err(format!("{why} (want NAME=URL)"));
    let Some((name, url)) = arg.split_once('=') else {
        return bad("no '='");
    };
    if name.is_empty() || name.len() > 255 {
        return bad("NAME must be 1 to 255 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
    {
        return bad("NAME may hold only letters, digits and . _ - :");
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return bad("URL must start with http:// or https://");
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return bad("URL has no host");
    }
    if authority.contains(['/', '?', '#', '@']) || authority.contains(char::is_whitespace) {
        return bad("URL must be scheme://host[:port] (no path, query or user)");
    }
    if let Some((host, port)) = authority.rsplit_once(':') {
        let bracketed_v6 = authority.starts_with('[') && !host.ends_with(']');
        if !bracketed_v6 && (host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0)) {
            return bad("bad host:port");
        }
    }
    if tonic::transport::Endpoint::from_shared(url.to_string()).is_err() {
        return bad("URL does not parse");
    }
    Ok(Cluster {
        name: name.to_string(),
        url: url.trim_end_matches('/').to_string(),
        ca_pem: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https_targets() {
        let c = parse_cluster("quota=http://127.0.0.1:8081").map_err(|e| e.to_string());
        assert_eq!(
            c.as_ref().map(|c| c.url.as_str()),
            Ok("http://127.0.0.1:8081")
        );
        let c = parse_cluster("outbound|9090||quota.svc=https://quota.example:443/");
        assert!(c.is_err(), "| is not allowed in a name: {c:?}");
        let c = parse_cluster("quota.svc=https://quota.example:443/");
        assert_eq!(
            c.map(|c| (c.tls(), c.url)),
            Ok((true, "https://quota.example:443".into()))
        );
        assert!(parse_cluster("q=http://[::1]:9000").is_ok());
        assert!(parse_cluster("q=http://localhost").is_ok());
    }

    #[test]
    fn rejects_malformed_arguments_naming_them() {
        for bad in [
            "quota",
            "=http://a:1",
            "quota=grpc://a:1",
            "quota=http://",
            "quota=http://a:1/path",
            "quota=http://user@a:1",
            "quota=http://a:0",
            "quota=http://a:99999",
            "quo ta=http://a:1",
        ] {
            let e = Clusters::parse(&[bad]).err();
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains(bad) && e.contains("want NAME=URL")),
                "{bad}: {e:?}"
            );
        }
        let e = Clusters::parse(&["a=http://x:1", "a=http://y:2"]).err();
        assert_eq!(
            e.as_deref(),
            Some("--grpc-cluster \"a=http://y:2\": a is given twice")
        );
    }
}
