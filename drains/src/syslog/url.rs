//! Drain URLs: which transport, where, with which options; and how they are shown in logs and
//! notices (never with credentials).

use std::fmt;

use super::format::FormatOptions;

/// How a drain moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `syslog://`: TCP, octet counting.
    Tcp,
    /// `syslog-tls://`: TLS over TCP, octet counting.
    Tls,
    /// `syslog-udp://`: one datagram per message.
    Udp,
    /// `https://`: one POST per message.
    Https,
    /// `https-batch://`: POSTs of newline-joined messages.
    HttpsBatch,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "syslog",
            Scheme::Tls => "syslog-tls",
            Scheme::Udp => "syslog-udp",
            Scheme::Https => "https",
            Scheme::HttpsBatch => "https-batch",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Tcp | Scheme::Udp => 514,
            Scheme::Tls => 6514,
            Scheme::Https | Scheme::HttpsBatch => 443,
        }
    }
}

/// A validated drain URL.
#[derive(Clone, PartialEq, Eq)]
pub struct DrainUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// For https drains: the URL to POST to (scheme `https`, credentials kept for the request).
    pub endpoint: String,
    pub format: FormatOptions,
    /// `?insecure-skip-verify=true` on a TLS or https drain: accept any certificate.
    pub insecure_skip_verify: bool,
    /// The URL as it may be shown: no user, password or query other than Sluice's own options.
    redacted: String,
    /// The URL as given, for equality and for the API's owner (never logged).
    original: String,
}

/// Why a drain URL was refused (the API answers 422 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainUrlError {
    #[error("invalid drain url: {0}")]
    Parse(String),
    #[error(
        "unsupported drain url scheme {0:?}: use syslog://, syslog-tls://, syslog-udp://, https:// or https-batch://"
    )]
    Scheme(String),
    #[error("invalid drain url: no host")]
    NoHost,
    #[error("invalid drain url: port 0")]
    Port,
    #[error("invalid drain url: {0} is longer than 2048 bytes")]
    TooLong(usize),
    #[error(
        "invalid drain url: unknown option {0:?} (known: disable-metadata, insecure-skip-verify)"
    )]
    Option(String),
}

impl DrainUrl {
    pub fn parse(s: &str) -> Result<DrainUrl, DrainUrlError> {
        if s.len() > 2048 {
            return Err(DrainUrlError::TooLong(s.len()));
        }
        let url = url::Url::parse(s).map_err(|e| DrainUrlError::Parse(e.to_string()))?;
        // The limit holds for the URL as normalised too (percent-encoding can triple raw bytes),
        // so that what is accepted and shown is also accepted back (found by the drain_url
        // fuzz target).
        if url.as_str().len() > 2048 {
            return Err(DrainUrlError::TooLong(url.as_str().len()));
        }
        let scheme = match url.scheme() {
            "syslog" => Scheme::Tcp,
            "syslog-tls" => Scheme::Tls,
            "syslog-udp" => Scheme::Udp,
            "https" => Scheme::Https,
            "https-batch" => Scheme::HttpsBatch,
            other => return Err(DrainUrlError::Scheme(other.to_owned())),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(DrainUrlError::NoHost),
        };
        let port = url.port().unwrap_or(scheme.default_port());
        if port == 0 {
            return Err(DrainUrlError::Port);
        }
        let mut format = FormatOptions::default();
        let mut insecure_skip_verify = false;
        for (k, v) in url.query_pairs() {
            let on = matches!(v.as_ref(), "true" | "1" | "yes");
            match k.as_ref() {
                "disable-metadata" => format.disable_metadata = on,
                "insecure-skip-verify" => insecure_skip_verify = on,
                // https endpoints may take their own query parameters.
                _ if matches!(scheme, Scheme::Https | Scheme::HttpsBatch) => {}
                other => return Err(DrainUrlError::Option(other.to_owned())),
            }
        }
        let host_shown = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            _ => host.clone(),
        };
        let path = match scheme {
            Scheme::Https | Scheme::HttpsBatch => url.path().to_owned(),
            _ => String::new(),
        };
        // Options are not secrets, and two drains that differ only by them must look different.
        let mut options = Vec::new();
        if format.disable_metadata {
            options.push("disable-metadata=true");
        }
        if insecure_skip_verify {
            options.push("insecure-skip-verify=true");
        }
        let query = if options.is_empty() {
            String::new()
        } else {
            format!("?{}", options.join("&"))
        };
        let redacted = format!("{}://{host_shown}:{port}{path}{query}", scheme.as_str());
        // What is shown must parse back: it spells out the port, which the normalised URL
        // leaves out when it is the scheme's default.
        if redacted.len() > 2048 {
            return Err(DrainUrlError::TooLong(redacted.len()));
        }
        let endpoint = match scheme {
            Scheme::Https | Scheme::HttpsBatch => {
                let rest = &s[s.find("://").map_or(0, |i| i + 3)..];
                format!("https://{rest}")
            }
            _ => String::new(),
        };
        Ok(DrainUrl {
            scheme,
            host,
            port,
            endpoint,
            format,
            insecure_skip_verify,
            redacted,
            original: s.to_owned(),
        })
    }

    /// `host:port`, for connecting.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL as given (it may hold credentials: never log it).
    pub fn original(&self) -> &str {
        &self.original
    }
}

/// Shows the redacted form: safe for logs and notices.
impl fmt::Display for DrainUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DrainUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DrainUrl({})", self.redacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme_with_defaults() {
        let u = DrainUrl::parse("syslog://logs.example.com").unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Tcp, 514));
        assert_eq!(u.to_string(), "syslog://logs.example.com:514");
        let u = DrainUrl::parse("syslog-tls://127.0.0.1:6000?insecure-skip-verify=true").unwrap();
        assert!(u.insecure_skip_verify);
        assert_eq!(u.authority(), "127.0.0.1:6000");
        let u = DrainUrl::parse("syslog-udp://[::1]:5514/?disable-metadata=true").unwrap();
        assert!(u.format.disable_metadata);
        assert_eq!(u.authority(), "[::1]:5514");
        assert_eq!(
            u.to_string(),
            "syslog-udp://[::1]:5514?disable-metadata=true"
        );
        let u = DrainUrl::parse("https-batch://user:secret@logs.example.com/in?token=abc").unwrap();
        assert_eq!(
            u.endpoint,
            "https://user:secret@logs.example.com/in?token=abc"
        );
        assert_eq!(u.to_string(), "https-batch://logs.example.com:443/in");
    }

    #[test]
    fn credentials_never_show() {
        let u = DrainUrl::parse("syslog-tls://admin:hunter2@logs.example.com:6514").unwrap();
        assert!(!format!("{u} {u:?}").contains("hunter2"));
        assert!(!format!("{u}").contains("admin"));
    }

    #[test]
    fn hostile_urls_are_refused_with_a_reason() {
        let cases = [
            (
                "ftp://x:1",
                "unsupported drain url scheme \"ftp\": use syslog://, syslog-tls://, syslog-udp://, https:// or https-batch://",
            ),
            ("syslog://:514", "invalid drain url: empty host"),
            ("syslog://", "invalid drain url: no host"),
            ("syslog://host:0", "invalid drain url: port 0"),
            (
                "syslog://host:99999",
                "invalid drain url: invalid port number",
            ),
            (
                "not a url",
                "invalid drain url: relative URL without a base",
            ),
            (
                "syslog://host:514?evil=1",
                "invalid drain url: unknown option \"evil\" (known: disable-metadata, insecure-skip-verify)",
            ),
        ];
        for (url, reason) in cases {
            assert_eq!(
                DrainUrl::parse(url).unwrap_err().to_string(),
                reason,
                "{url}"
            );
        }
        let long = format!("syslog://{}.com:514", "a".repeat(3000));
        assert!(
            DrainUrl::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("longer than 2048")
        );
    }
}
