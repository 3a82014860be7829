//! Bearer tokens: agents send OTLP with one, API readers see what their token allows.
//!
//! Tokens are configured by their SHA-256 (never in clear in the config), or read from a file
//! (a Kubernetes Secret) and hashed at startup. A presented token is hashed and compared with
//! every configured hash in constant time, so timing reveals neither which token nor how much
//! of it matched.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Send OTLP.
    Agent,
    /// Everything: ingest and read every tenant.
    Admin,
    /// Read one tenant's reports (the `tenant` field).
    Tenant,
}

/// One `[[auth.tokens]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and metrics (never the token).
    pub name: String,
    pub role: Role,
    /// The tenant a `tenant` token reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Lowercase hex SHA-256 of the token (`tenantscope-collector hash-token` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A file holding the token in clear (trailing whitespace ignored), e.g. a mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `[auth]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
    /// Without tokens, the collector only listens on loopback addresses, unless this is set.
    pub allow_unauthenticated: bool,
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("auth.tokens[{i}] ({:?})", t.name);
            match (&t.sha256, &t.token_file) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(format!("{at}: set exactly one of sha256 and token_file"));
                }
                (Some(h), None) if parse_hex32(h).is_none() => {
                    return Err(format!("{at}: sha256 must be 64 hex digits"));
                }
                _ => {}
            }
            match (&t.role, &t.tenant) {
                (Role::Tenant, None) => return Err(format!("{at}: a tenant token needs tenant")),
                (Role::Agent | Role::Admin, Some(_)) => {
                    return Err(format!("{at}: only tenant tokens have a tenant"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Who a request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No tokens are configured: everything is allowed (loopback only unless configured).
    Anonymous,
    Token {
        name: String,
        role: Role,
        tenant: Option<String>,
    },
}

impl Principal {
    pub fn may_ingest(&self) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::Token { role, .. } => matches!(role, Role::Agent | Role::Admin),
        }
    }

    /// Whether this principal may read `tenant`'s data.
    pub fn may_read(&self, tenant: &str) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::Token {
                role: Role::Admin, ..
            } => true,
            Principal::Token {
                role: Role::Tenant,
                tenant: Some(t),
                ..
            } => t == tenant,
            Principal::Token { .. } => false,
        }
    }

    /// The only tenant this principal may read, if it is restricted to one.
    pub fn only_tenant(&self) -> Option<&str> {
        match self {
            Principal::Token {
                role: Role::Tenant,
                tenant,
                ..
            } => tenant.as_deref(),
            _ => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Principal::Anonymous
                | Principal::Token {
                    role: Role::Admin,
                    ..
                }
        )
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
}

/// The configured tokens, hashed.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Principal)>,
}

pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Equal without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// Hashes the configured tokens (reading token files). Errors name the token.
    pub fn load(cfg: &AuthConfig) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for t in &cfg.tokens {
            let hash = match (&t.sha256, &t.token_file) {
                (Some(h), _) => {
                    parse_hex32(h).ok_or_else(|| format!("auth token {:?}: bad sha256", t.name))?
                }
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        format!("auth token {:?}: reading {}: {e}", t.name, path.display())
                    })?;
                    let token = text.trim_end();
                    if token.is_empty() {
                        return Err(format!(
                            "auth token {:?}: {} is empty",
                            t.name,
                            path.display()
                        ));
                    }
                    sha256(token)
                }
                (None, None) => {
                    return Err(format!("auth token {:?}: no sha256 or token_file", t.name));
                }
            };
            entries.push((
                hash,
                Principal::Token {
                    name: t.name.clone(),
                    role: t.role.clone(),
                    tenant: t.tenant.clone(),
                },
            ));
        }
        Ok(Tokens { entries })
    }

    /// Whether any token is configured (else every request is [`Principal::Anonymous`]).
    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The principal of an `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        if self.entries.is_empty() {
            return Ok(Principal::Anonymous);
        }
        let value = authorization.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Invalid)?
            .trim();
        let presented = sha256(token);
        // Compare with every entry, so the time does not depend on which one matches.
        let mut found = None;
        for (hash, who) in &self.entries {
            if constant_time_eq(hash, &presented) && found.is_none() {
                found = Some(who);
            }
        }
        found.cloned().ok_or(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, role: Role, tenant: Option<&str>, secret: &str) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            role,
            tenant: tenant.map(String::from),
            sha256: Some(hex(&sha256(secret))),
            token_file: None,
        }
    }

    fn tokens() -> Tokens {
        let cfg = AuthConfig {
            tokens: vec![
                token("agents", Role::Agent, None, "agent-secret"),
                token("ops", Role::Admin, None, "admin-secret"),
                token("acme", Role::Tenant, Some("acme"), "acme-secret"),
            ],
            allow_unauthenticated: false,
        };
        cfg.validate().unwrap();
        Tokens::load(&cfg).unwrap()
    }

    #[test]
    fn tokens_grant_their_role_only() {
        let t = tokens();
        assert_eq!(t.check(None), Err(AuthError::Missing));
        assert_eq!(t.check(Some("Bearer nope")), Err(AuthError::Invalid));
        assert_eq!(t.check(Some("Basic YWdlbnQ=")), Err(AuthError::Invalid));
        let agent = t.check(Some("Bearer agent-secret")).unwrap();
        assert!(agent.may_ingest() && !agent.may_read("acme"));
        let admin = t.check(Some("Bearer admin-secret")).unwrap();
        assert!(admin.may_ingest() && admin.may_read("acme") && admin.may_read("globex"));
        let acme = t.check(Some("bearer acme-secret")).unwrap();
        assert!(!acme.may_ingest() && acme.may_read("acme") && !acme.may_read("globex"));
        assert_eq!(acme.only_tenant(), Some("acme"));
        let open = Tokens::default();
        assert_eq!(open.check(None), Ok(Principal::Anonymous));
    }

    #[test]
    fn token_files_are_read_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-a-secret\n").unwrap();
        let cfg = AuthConfig {
            tokens: vec![TokenConfig {
                name: "file".into(),
                role: Role::Agent,
                tenant: None,
                sha256: None,
                token_file: Some(path.clone()),
            }],
            allow_unauthenticated: false,
        };
        let t = Tokens::load(&cfg).unwrap();
        assert!(t.check(Some("Bearer from-a-secret")).is_ok());
        std::fs::write(&path, "\n").unwrap();
        assert!(Tokens::load(&cfg).unwrap_err().contains("is empty"));
    }

    #[test]
    fn bad_entries_are_named() {
        let mut bad = token("x", Role::Tenant, None, "s");
        let err = |t: TokenConfig| {
            AuthConfig {
                tokens: vec![t],
                allow_unauthenticated: false,
            }
            .validate()
            .unwrap_err()
        };
        assert!(err(bad.clone()).contains("(\"x\"): a tenant token needs tenant"));
        bad.tenant = Some("acme".into());
        bad.sha256 = Some("abc".into());
        assert!(err(bad.clone()).contains("64 hex digits"));
        bad.token_file = Some("/x".into());
        assert!(err(bad).contains("exactly one"));
    }
}
