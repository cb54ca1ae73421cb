//! Bearer tokens with scopes (SPEC §7): who may send, read and operate.
//!
//! Tokens live in the config file as SHA-256 hashes (`sluice token` makes one and prints both);
//! a presented token is hashed and compared with every configured hash in constant time. A
//! token has scopes:
//! - `ingest`: send envelopes (native ingest, `POST /api/v1/ingest`, Strøm's worker logs), to
//!   the sources its `sources` globs allow (all without them);
//! - `read`: recent lines, tails and job reads of the sources its globs allow; drains of those
//!   sources (not to loopback or link-local addresses);
//! - `operator`: everything: the firehose, every drain, completions, the sources list,
//!   `/metrics`.
//!
//! With no tokens configured every request is allowed and the listeners bind loopback only.
//! Requests without a token get 401, with a token that does not cover them 403, each with the
//! reason. `/healthz` and `/readyz` are always open.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Ingest,
    Read,
    Operator,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Operator => "operator",
        }
    }
}

/// One `auth.tokens` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Shown in logs and refusals (never the token).
    pub name: String,
    /// The token's SHA-256, 64 hex digits (`sluice token` prints it).
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// Source-id globs (`*` matches any run of characters) that `ingest` and `read` cover;
    /// empty: every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

/// The tokens a server accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Arc<[Token]>,
}

/// A configured token, once presented and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    sources: Vec<String>,
}

/// Why a request may not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// 401: no token, or one this server does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a known token that does not cover the request.
    #[error("{0}")]
    Forbidden(String),
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No tokens are configured: everything is allowed (loopback only).
    Open,
    /// Tokens are configured and none was presented.
    Anonymous,
    Token(Token),
}

/// The tokens a running server checks requests against; [`Guard::replace`] swaps them (a
/// reload) without disturbing requests in flight.
#[derive(Debug, Default)]
pub struct Guard {
    tokens: parking_lot::RwLock<Tokens>,
}

impl Guard {
    pub fn new(tokens: Tokens) -> Guard {
        Guard {
            tokens: parking_lot::RwLock::new(tokens),
        }
    }

    /// Who presents `token`; see [`Tokens::caller`].
    pub fn caller(&self, token: Option<&str>) -> Result<Caller, Denied> {
        self.tokens.read().caller(token)
    }

    /// Whether no tokens are configured (everything allowed, loopback only).
    pub fn is_open(&self) -> bool {
        self.tokens.read().is_empty()
    }

    pub fn token_count(&self) -> usize {
        self.tokens.read().entries.len()
    }

    pub fn replace(&self, tokens: Tokens) {
        *self.tokens.write() = tokens;
    }
}

impl Tokens {
    /// The config's tokens, checked: names unique, hashes 64 hex digits, at least one scope.
    pub fn new(configs: &[TokenConfig]) -> Result<Tokens, String> {
        let mut entries: Vec<Token> = Vec::with_capacity(configs.len());
        for c in configs {
            if c.name.is_empty() || entries.iter().any(|t| t.name == c.name) {
                return Err(format!(
                    "auth.tokens: every token needs a name of its own ({:?})",
                    c.name
                ));
            }
            let hash = parse_hex(&c.sha256).ok_or_else(|| {
                format!(
                    "auth.tokens {:?}: sha256 must be 64 hex digits, the token's SHA-256 (`sluice token` prints one)",
                    c.name
                )
            })?;
            if c.scopes.is_empty() {
                return Err(format!(
                    "auth.tokens {:?}: scopes must name at least one of ingest, read, operator",
                    c.name
                ));
            }
            if let Some(bad) = c.sources.iter().find(|g| g.is_empty()) {
                return Err(format!(
                    "auth.tokens {:?}: an empty source glob {bad:?}",
                    c.name
                ));
            }
            entries.push(Token {
                name: c.name.clone(),
                hash,
                scopes: c.scopes.clone(),
                sources: c.sources.clone(),
            });
        }
        Ok(Tokens {
            entries: entries.into(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Who presents `token` (`None`: no token presented).
    pub fn caller(&self, token: Option<&str>) -> Result<Caller, Denied> {
        if self.entries.is_empty() {
            return Ok(Caller::Open);
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(Caller::Anonymous);
        };
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, in constant time each, whichever matches.
        let mut found = None;
        for t in self.entries.iter() {
            if bool::from(t.hash.ct_eq(&presented)) {
                found = Some(t);
            }
        }
        found
            .cloned()
            .map(Caller::Token)
            .ok_or_else(|| Denied::Unauthenticated("the token is not one this server knows".into()))
    }
}

impl Caller {
    /// Whether this caller may use `scope` (on `source`, for `ingest` and `read`).
    pub fn allow(&self, scope: Scope, source: Option<&str>) -> Result<(), Denied> {
        let t = match self {
            Caller::Open => return Ok(()),
            Caller::Anonymous => {
                return Err(Denied::Unauthenticated(format!(
                    "this needs a token with the {} scope: send Authorization: Bearer TOKEN",
                    scope.name()
                )));
            }
            Caller::Token(t) => t,
        };
        if t.scopes.contains(&Scope::Operator) {
            return Ok(());
        }
        if scope == Scope::Operator || !t.scopes.contains(&scope) {
            return Err(Denied::Forbidden(format!(
                "token {:?} has no {} scope",
                t.name,
                scope.name()
            )));
        }
        match source {
            Some(s) if !t.covers(s) => Err(Denied::Forbidden(format!(
                "token {:?} does not cover source {s:?}",
                t.name
            ))),
            _ => Ok(()),
        }
    }

    /// Whether this caller is an operator (or no tokens are configured).
    pub fn is_operator(&self) -> bool {
        self.allow(Scope::Operator, None).is_ok()
    }
}

impl Token {
    fn covers(&self, source: &str) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|g| glob_match(g, source))
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
pub fn glob_match(glob: &str, s: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The SHA-256 of `token` in hex, as `auth.tokens[].sha256` takes it.
pub fn hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token: 32 bytes from the system's generator, as 43 URL-safe characters.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = String::with_capacity(43);
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
        }
    }
    if n > 0 {
        out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let t = |name: &str, token: &str, scopes: Vec<Scope>, sources: &[&str]| TokenConfig {
            name: name.into(),
            sha256: hash_hex(token),
            scopes,
            sources: sources.iter().map(|s| s.to_string()).collect(),
        };
        Tokens::new(&[
            t("ops", "op-secret", vec![Scope::Operator], &[]),
            t("ci", "ci-secret", vec![Scope::Ingest], &["app-*"]),
            t(
                "dev",
                "dev-secret",
                vec![Scope::Read, Scope::Ingest],
                &["app-web", "job-*-x"],
            ),
        ])
        .unwrap()
    }

    #[test]
    fn scopes_and_globs() {
        let t = tokens();
        let ops = t.caller(Some("op-secret")).unwrap();
        let ci = t.caller(Some("ci-secret")).unwrap();
        let dev = t.caller(Some("dev-secret")).unwrap();
        let nobody = t.caller(None).unwrap();
        assert!(ops.allow(Scope::Read, Some("anything")).is_ok());
        assert!(ops.is_operator());
        assert!(ci.allow(Scope::Ingest, Some("app-1")).is_ok());
        assert!(matches!(
            ci.allow(Scope::Ingest, Some("db")),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            ci.allow(Scope::Read, Some("app-1")),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            ci.allow(Scope::Operator, None),
            Err(Denied::Forbidden(_))
        ));
        assert!(dev.allow(Scope::Read, Some("app-web")).is_ok());
        assert!(dev.allow(Scope::Read, Some("job-7-x")).is_ok());
        assert!(dev.allow(Scope::Read, Some("job-7-y")).is_err());
        assert!(matches!(
            nobody.allow(Scope::Read, Some("a")),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            t.caller(Some("guess")),
            Err(Denied::Unauthenticated(_))
        ));
        assert_eq!(Tokens::default().caller(None).unwrap(), Caller::Open);
    }

    #[test]
    fn globs() {
        for (g, s, m) in [
            ("*", "", true),
            ("app-*", "app-", true),
            ("app-*", "ap", false),
            ("*-web", "app-web", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("a*a", "a", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(g, s), m, "{g} {s}");
        }
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let ok = TokenConfig {
            name: "a".into(),
            sha256: hash_hex("x"),
            scopes: vec![Scope::Read],
            sources: vec![],
        };
        let mut short = ok.clone();
        short.sha256.pop();
        assert!(Tokens::new(&[short]).unwrap_err().contains("64 hex digits"));
        let mut none = ok.clone();
        none.scopes.clear();
        assert!(Tokens::new(&[none]).unwrap_err().contains("at least one"));
        assert!(
            Tokens::new(&[ok.clone(), ok])
                .unwrap_err()
                .contains("name of its own")
        );
    }

    #[test]
    fn new_tokens_are_43_url_safe_characters_and_differ() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a, b);
    }
}
