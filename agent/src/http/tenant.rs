//! Tenant attribution: which tenant a captured HTTP request belongs to.
//!
//! An ordered chain of [`TenantSource`]s is tried in turn; the first that yields a **valid** id
//! wins. A source that has no value is skipped; one whose value is invalid (or valid but not in
//! the allowlist) is counted and skipped, so a later source can still attribute the request.
//!
//! Ids are normalised to lowercase and must be `[a-z0-9]` then `[a-z0-9._-]*`, 1 to `max_len`
//! bytes, and not one of the reserved values below; anything else never becomes a label. When no
//! source yields a valid id the tenant is [`INVALID`] if some source had a rejected value, else
//! [`UNKNOWN`] — never dropped. The first `max_tenants` distinct ids get their own label, later
//! ones fold into [`OTHER`] (counted), so the label takes at most `max_tenants + 3` values.
//!
//! Labels are interned: resolving an already-seen tenant from a header, host, path, pod label or
//! namespace allocates nothing. (Baggage parsing, done by the OpenTelemetry propagator, allocates;
//! it only runs when the sources before it in the chain found nothing.)

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::aggregate::FastSet;
use std::sync::Arc;

use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::BaggagePropagator;
use serde::{Deserialize, Serialize};

use super::route::path_only;

/// Tenant of a request no source attributed.
pub const UNKNOWN: &str = "unknown";
/// Tenant of a request whose only tenant values were invalid or not allowlisted.
pub const INVALID: &str = "invalid";
/// Tenant of a request whose valid tenant did not fit under `max_tenants`.
pub const OTHER: &str = "_other";
/// Values a source may not claim: they would pass for the sentinels above.
const RESERVED: [&str; 2] = [UNKNOWN, INVALID];

/// Bounds enforced by [`TenantConfig::validate`].
const MAX_TENANTS: (usize, usize) = (1, 100_000);
/// Upper bound of `max_len` (a DNS name's length); also the size of the normalisation buffer.
const MAX_LEN_LIMIT: usize = 253;
const MAX_PATTERN_SEGMENTS: usize = 32;
/// Headers that must never be read for a tenant: their contents may not leave the node.
const FORBIDDEN_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// One place a tenant id can come from, in `[http.tenant].sources`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum TenantSource {
    /// A request header (`{ source = "header", name = "X-Tenant-ID" }`). At most one per chain.
    Header {
        /// Header name, case-insensitive. Default `"X-Tenant-ID"`.
        #[serde(default = "default_header_name")]
        name: String,
    },
    /// The Host label directly under a base domain: with `domains = ["platform.example"]`,
    /// `acme.platform.example` gives `acme`, `x.acme.platform.example` gives nothing (unless
    /// `acme.platform.example` is a base domain too). Port, case and a trailing dot are ignored.
    HostSubdomain {
        /// Base domains. Default: none, which makes the source inactive.
        #[serde(default)]
        domains: Vec<String>,
        /// Labels that are not tenants, such as `"www"` or `"api"`. Default: none.
        #[serde(default)]
        ignore: Vec<String>,
    },
    /// A member of the W3C `baggage` header, percent-decoded. Baggage is set by clients and
    /// crosses trust boundaries, so it is a **hint, not an authority**: it is only consulted in
    /// its place in the chain, after the sources listed before it found nothing valid.
    Baggage {
        /// Baggage member key, case-sensitive. Default `"tenant.id"`.
        #[serde(default = "default_baggage_key")]
        key: String,
    },
    /// A path segment: `"/t/{tenant}/"` takes `acme` from `/t/acme/posts`. The pattern is a
    /// prefix of literal segments, `{name}` placeholders (any one segment) and exactly one
    /// `{tenant}`.
    PathPrefix {
        /// The pattern, starting with `/`; a trailing `/` is optional. Required.
        pattern: String,
    },
    /// A label of the pod that served the request.
    PodLabel {
        /// The label key, e.g. `"platform.example/tenant"`. Required.
        name: String,
    },
    /// The namespace of the pod that served the request.
    Namespace,
}

fn default_header_name() -> String {
    "X-Tenant-ID".to_owned()
}

fn default_baggage_key() -> String {
    "tenant.id".to_owned()
}

/// `[http.tenant]`: how requests are attributed to tenants, and the bounds on the tenant label.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Sources tried in order; the first valid id wins. Default: the `X-Tenant-ID` header, the
    /// Host subdomain (inactive until `domains` is set), the `tenant.id` baggage member.
    pub sources: Vec<TenantSource>,
    /// Known tenant ids (the tenant registry); valid ids not listed count as invalid. At most
    /// `max_tenants` entries. Default: empty, meaning any valid id.
    pub allowlist: Vec<String>,
    /// Distinct tenants that get their own label; later ones are folded into `"_other"` (and
    /// counted). Between 1 and 100000. Default `1000`.
    pub max_tenants: usize,
    /// Longest valid tenant id, in bytes. Between 1 and 253. Default `63`.
    pub max_len: usize,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            // The platform's own conventions: header first (set by its gateway), then the
            // subdomain; baggage last because clients control it.
            sources: vec![
                TenantSource::Header {
                    name: default_header_name(),
                },
                TenantSource::HostSubdomain {
                    domains: Vec::new(),
                    ignore: Vec::new(),
                },
                TenantSource::Baggage {
                    key: default_baggage_key(),
                },
            ],
            allowlist: Vec::new(),
            // Enough for the platform's communities on one node, small enough for one scrape.
            max_tenants: 1000,
            // A DNS label, so that a subdomain tenant always fits.
            max_len: 63,
        }
    }
}

impl TenantConfig {
    /// The pod label keys the chain reads (what the pod index must keep of each pod).
    pub fn pod_label_keys(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter_map(|s| match s {
                TenantSource::PodLabel { name } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Checks bounds and every source; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let (min, max) = MAX_TENANTS;
        if !(min..=max).contains(&self.max_tenants) {
            return Err(format!(
                "http.tenant.max_tenants: {} is not between {min} and {max}",
                self.max_tenants
            ));
        }
        if !(1..=MAX_LEN_LIMIT).contains(&self.max_len) {
            return Err(format!(
                "http.tenant.max_len: {} is not between 1 and {MAX_LEN_LIMIT}",
                self.max_len
            ));
        }
        let mut header_at = None;
        for (i, source) in self.sources.iter().enumerate() {
            let key = format!("http.tenant.sources[{i}]");
            match source {
                TenantSource::Header { name } => {
                    if let Some(first) = header_at.replace(i) {
                        return Err(format!(
                            "{key}: a second header source (the first is sources[{first}]); \
                             only one header is captured"
                        ));
                    }
                    if name.is_empty() || !name.bytes().all(is_token_byte) {
                        return Err(format!("{key}.name: {name:?} is not an HTTP header name"));
                    }
                    if FORBIDDEN_HEADERS
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case(name))
                    {
                        return Err(format!(
                            "{key}.name: {name:?} carries credentials and is never read"
                        ));
                    }
                }
                TenantSource::HostSubdomain { domains, ignore } => {
                    for (j, domain) in domains.iter().enumerate() {
                        let d = domain.strip_suffix('.').unwrap_or(domain);
                        if d.is_empty() || d.len() > 253 || !d.split('.').all(is_dns_label) {
                            return Err(format!(
                                "{key}.domains[{j}]: {domain:?} is not a domain name"
                            ));
                        }
                    }
                    for (j, label) in ignore.iter().enumerate() {
                        if !is_dns_label(label) {
                            return Err(format!(
                                "{key}.ignore[{j}]: {label:?} is not a single DNS label"
                            ));
                        }
                    }
                }
                TenantSource::Baggage { key: member } => {
                    if member.is_empty() || !member.bytes().all(is_token_byte) {
                        return Err(format!("{key}.key: {member:?} is not a baggage key"));
                    }
                }
                TenantSource::PathPrefix { pattern } => {
                    PathPattern::parse(pattern)
                        .map_err(|e| format!("{key}.pattern: {pattern:?}: {e}"))?;
                }
                TenantSource::PodLabel { name } => {
                    if name.is_empty()
                        || name.len() > 317
                        || !name.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(format!("{key}.name: {name:?} is not a pod label key"));
                    }
                }
                TenantSource::Namespace => {}
            }
        }
        let mut buf = [0u8; MAX_LEN_LIMIT];
        let mut allowed = HashSet::new();
        for (j, id) in self.allowlist.iter().enumerate() {
            match normalise(id, self.max_len, &mut buf) {
                Some(id) if !RESERVED.contains(&id) => {
                    allowed.insert(id.to_owned());
                }
                _ => {
                    return Err(format!(
                        "http.tenant.allowlist[{j}]: {id:?} is not a valid tenant id ([a-z0-9] \
                         then [a-z0-9._-], at most max_len = {} bytes, not {UNKNOWN:?} or \
                         {INVALID:?})",
                        self.max_len
                    ));
                }
            }
        }
        if allowed.len() > self.max_tenants {
            return Err(format!(
                "http.tenant.allowlist: {} distinct tenants exceed http.tenant.max_tenants ({}); \
                 the rest would be folded into {OTHER:?}",
                allowed.len(),
                self.max_tenants
            ));
        }
        Ok(())
    }
}

/// `tchar` of RFC 9110: header names and baggage keys.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_dns_label(label: &str) -> bool {
    let b = label.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The tenant id `value` stands for: ASCII-lowercased, `[a-z0-9]` then `[a-z0-9._-]`, 1 to
/// `max_len` bytes. Lowercases into `buf` only when needed, so nothing is allocated.
fn normalise<'a>(
    value: &'a str,
    max_len: usize,
    buf: &'a mut [u8; MAX_LEN_LIMIT],
) -> Option<&'a str> {
    let bytes = value.as_bytes();
    let valid = (1..=max_len.min(MAX_LEN_LIMIT)).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return None;
    }
    if !bytes.iter().any(u8::is_ascii_uppercase) {
        return Some(value);
    }
    let out = &mut buf[..bytes.len()];
    out.copy_from_slice(bytes);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// What the agent knows about a request when attributing it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestView<'a> {
    /// Value of the configured tenant header ([`TenantResolver::header_name`]), if present.
    pub tenant_header: Option<&'a str>,
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// The request target's path (a query string, if any, is ignored).
    pub path: &'a str,
    /// The `baggage` header.
    pub baggage: Option<&'a str>,
    /// Labels of the pod that served the request.
    pub pod_labels: Option<&'a BTreeMap<String, String>>,
    /// Namespace of the pod that served the request.
    pub namespace: Option<&'a str>,
}

/// Per-source counters; [`SourceCounts::iter`] gives them with their `source` label value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCounts {
    pub header: u64,
    pub host: u64,
    pub baggage: u64,
    pub path: u64,
    pub pod_label: u64,
    pub namespace: u64,
}

impl SourceCounts {
    /// `(source, count)` for every source, named as [`TenantResolver::resolve`] names them.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            (Kind::Header, self.header),
            (Kind::Host, self.host),
            (Kind::Baggage, self.baggage),
            (Kind::Path, self.path),
            (Kind::PodLabel, self.pod_label),
            (Kind::Namespace, self.namespace),
        ]
        .into_iter()
        .map(|(k, n)| (k.as_str(), n))
    }

    fn get_mut(&mut self, kind: Kind) -> &mut u64 {
        match kind {
            Kind::Header => &mut self.header,
            Kind::Host => &mut self.host,
            Kind::Baggage => &mut self.baggage,
            Kind::Path => &mut self.path,
            Kind::PodLabel => &mut self.pod_label,
            Kind::Namespace => &mut self.namespace,
        }
    }
}

/// What the resolver counts about itself (exported as agent self-metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantStats {
    /// Values a source had that were not valid tenant ids (including reserved ones), per source.
    pub invalid: SourceCounts,
    /// Valid ids rejected because they are not in the allowlist.
    pub not_allowlisted: u64,
    /// Requests whose tenant was folded into [`OTHER`] because `max_tenants` was reached.
    pub overflowed: u64,
    /// Tenants with their own label (at most `max_tenants`).
    pub distinct_tenants: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Header,
    Host,
    Baggage,
    Path,
    PodLabel,
    Namespace,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Header => "header",
            Kind::Host => "host",
            Kind::Baggage => "baggage",
            Kind::Path => "path",
            Kind::PodLabel => "pod_label",
            Kind::Namespace => "namespace",
        }
    }
}

#[derive(Debug)]
enum PatternSegment {
    Literal(Box<str>),
    Any,
    Tenant,
}

#[derive(Debug)]
struct PathPattern(Vec<PatternSegment>);

impl PathPattern {
    fn parse(pattern: &str) -> Result<Self, String> {
        let Some(body) = pattern.strip_prefix('/') else {
            return Err("must start with '/'".to_owned());
        };
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segments = Vec::new();
        for part in body.split('/') {
            let segment = match part {
                "" => return Err("empty segment".to_owned()),
                "{tenant}" => PatternSegment::Tenant,
                _ => match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(name)
                        if !name.is_empty()
                            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        PatternSegment::Any
                    }
                    _ if part.chars().all(|c| {
                        c.is_ascii_graphic() && !matches!(c, '{' | '}' | '*' | '?' | '#')
                    }) =>
                    {
                        PatternSegment::Literal(part.into())
                    }
                    _ => {
                        return Err(format!(
                            "segment {part:?} is neither a literal (printable ASCII without \
                             '{{', '}}', '*', '?', '#') nor a whole-segment {{name}}"
                        ));
                    }
                },
            };
            segments.push(segment);
        }
        let tenants = segments
            .iter()
            .filter(|s| matches!(s, PatternSegment::Tenant))
            .count();
        if tenants != 1 {
            return Err(format!(
                "needs exactly one {{tenant}} segment, has {tenants}"
            ));
        }
        if segments.len() > MAX_PATTERN_SEGMENTS {
            return Err(format!("more than {MAX_PATTERN_SEGMENTS} segments"));
        }
        Ok(Self(segments))
    }

    /// The `{tenant}` segment of `path`, if `path` starts with the pattern. Empty segments are
    /// skipped, as servers do.
    fn tenant<'a>(&self, path: &'a str) -> Option<&'a str> {
        let mut segments = path_only(path).split('/').filter(|s| !s.is_empty());
        let mut tenant = None;
        for p in &self.0 {
            let s = segments.next()?;
            match p {
                PatternSegment::Literal(l) if **l != *s => return None,
                PatternSegment::Literal(_) | PatternSegment::Any => {}
                PatternSegment::Tenant => tenant = Some(s),
            }
        }
        tenant
    }
}

#[derive(Debug)]
enum Source {
    Header,
    Host {
        /// Without a trailing dot; compared case-insensitively.
        domains: Vec<Box<str>>,
        ignore: Vec<Box<str>>,
    },
    Baggage {
        key: Box<str>,
    },
    Path(PathPattern),
    PodLabel {
        name: Box<str>,
    },
    Namespace,
}

impl Source {
    fn kind(&self) -> Kind {
        match self {
            Source::Header => Kind::Header,
            Source::Host { .. } => Kind::Host,
            Source::Baggage { .. } => Kind::Baggage,
            Source::Path(_) => Kind::Path,
            Source::PodLabel { .. } => Kind::PodLabel,
            Source::Namespace => Kind::Namespace,
        }
    }
}

/// The Host label directly under one of `domains`, unless ignored.
fn host_label<'a>(host: &'a str, domains: &[Box<str>], ignore: &[Box<str>]) -> Option<&'a str> {
    if domains.is_empty() || host.starts_with('[') {
        // Inactive, or an IPv6 literal.
        return None;
    }
    let host = match host.rsplit_once(':') {
        // A second colon: a bare IPv6 address, not a name.
        Some((name, _)) if name.contains(':') => return None,
        Some((name, _port)) => name,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // The label directly under a base domain has the base domain as its whole parent.
    let (label, parent) = host.split_once('.')?;
    if !domains.iter().any(|d| d.eq_ignore_ascii_case(parent))
        || ignore.iter().any(|i| i.eq_ignore_ascii_case(label))
    {
        return None;
    }
    Some(label)
}

/// The tenant label set: allowlist, cap, interned labels, counters.
#[derive(Debug)]
struct Labels {
    allowlist: HashSet<Box<str>>,
    max_tenants: usize,
    max_len: usize,
    tenants: FastSet<Arc<str>>,
    unknown: Arc<str>,
    invalid: Arc<str>,
    other: Arc<str>,
    stats: TenantStats,
}

impl Labels {
    /// The label for a source's value, or `None` (counted) if the value is rejected.
    fn admit(&mut self, value: &str, kind: Kind) -> Option<Arc<str>> {
        let mut buf = [0u8; MAX_LEN_LIMIT];
        let Some(id) = normalise(value, self.max_len, &mut buf).filter(|id| !RESERVED.contains(id))
        else {
            *self.stats.invalid.get_mut(kind) += 1;
            return None;
        };
        if !self.allowlist.is_empty() && !self.allowlist.contains(id) {
            self.stats.not_allowlisted += 1;
            return None;
        }
        if let Some(label) = self.tenants.get(id) {
            return Some(label.clone());
        }
        if self.tenants.len() >= self.max_tenants {
            self.stats.overflowed += 1;
            return Some(self.other.clone());
        }
        let label: Arc<str> = Arc::from(id);
        self.tenants.insert(label.clone());
        Some(label)
    }
}

/// Attributes requests to tenants; see the module docs.
#[derive(Debug)]
pub struct TenantResolver {
    sources: Vec<Source>,
    /// Lowercase.
    header_name: Option<Box<str>>,
    propagator: BaggagePropagator,
    labels: Labels,
}

impl TenantResolver {
    /// Builds the resolver; fails with [`TenantConfig::validate`]'s message on a bad config.
    pub fn new(cfg: &TenantConfig) -> Result<Self, String> {
        cfg.validate()?;
        let mut header_name = None;
        let mut sources = Vec::with_capacity(cfg.sources.len());
        for source in &cfg.sources {
            sources.push(match source {
                TenantSource::Header { name } => {
                    header_name = Some(name.to_ascii_lowercase().into_boxed_str());
                    Source::Header
                }
                TenantSource::HostSubdomain { domains, ignore } => Source::Host {
                    domains: domains
                        .iter()
                        .map(|d| d.strip_suffix('.').unwrap_or(d).into())
                        .collect(),
                    ignore: ignore.iter().map(|i| i.as_str().into()).collect(),
                },
                TenantSource::Baggage { key } => Source::Baggage {
                    key: key.as_str().into(),
                },
                TenantSource::PathPrefix { pattern } => Source::Path(PathPattern::parse(pattern)?),
                TenantSource::PodLabel { name } => Source::PodLabel {
                    name: name.as_str().into(),
                },
                TenantSource::Namespace => Source::Namespace,
            });
        }
        Ok(Self {
            sources,
            header_name,
            propagator: BaggagePropagator::new(),
            labels: Labels {
                allowlist: cfg
                    .allowlist
                    .iter()
                    .map(|id| id.to_ascii_lowercase().into_boxed_str())
                    .collect(),
                max_tenants: cfg.max_tenants,
                max_len: cfg.max_len,
                tenants: FastSet::default(),
                unknown: Arc::from(UNKNOWN),
                invalid: Arc::from(INVALID),
                other: Arc::from(OTHER),
                stats: TenantStats::default(),
            },
        })
    }

    /// The lowercase name of the header source's header, so that the HTTP parser keeps it.
    pub fn header_name(&self) -> Option<&str> {
        self.header_name.as_deref()
    }

    /// The tenant label of a request and the source that gave it: `"header"`, `"host"`,
    /// `"baggage"`, `"path"`, `"pod_label"`, `"namespace"`, or `"none"` for [`UNKNOWN`] and
    /// [`INVALID`]. Sources are tried in configured order; values are trimmed of spaces and tabs,
    /// and an empty value counts as absent. Baggage is a hint, not an authority: it is parsed (by
    /// the OpenTelemetry propagator, which percent-decodes it) only if every source before it in
    /// the chain found nothing valid, so it can never override a header, host or path.
    pub fn resolve(&mut self, req: &RequestView) -> (Arc<str>, &'static str) {
        let mut rejected = false;
        for source in &self.sources {
            // Owns the parsed baggage the value borrows from.
            let cx: Context;
            let value = match source {
                Source::Header => req.tenant_header,
                Source::Host { domains, ignore } => req
                    .host
                    .and_then(|h| host_label(trim_ows(h), domains, ignore)),
                Source::Baggage { key } => match req.baggage {
                    Some(header) => {
                        let carrier = HashMap::from([("baggage".to_owned(), header.to_owned())]);
                        cx = self.propagator.extract(&carrier);
                        cx.baggage().get(&**key).map(|v| v.as_str())
                    }
                    None => None,
                },
                Source::Path(pattern) => pattern.tenant(req.path),
                Source::PodLabel { name } => req
                    .pod_labels
                    .and_then(|labels| labels.get(&**name))
                    .map(String::as_str),
                Source::Namespace => req.namespace,
            };
            let Some(value) = value.map(trim_ows).filter(|v| !v.is_empty()) else {
                continue;
            };
            let kind = source.kind();
            match self.labels.admit(value, kind) {
                Some(label) => return (label, kind.as_str()),
                None => rejected = true,
            }
        }
        let label = if rejected {
            &self.labels.invalid
        } else {
            &self.labels.unknown
        };
        (label.clone(), "none")
    }

    /// Counters since the resolver was built.
    pub fn stats(&self) -> TenantStats {
        TenantStats {
            distinct_tenants: self.labels.tenants.len(),
            ..self.labels.stats
        }
    }
}

/// Optional whitespace of RFC 9110 (space and tab, not CR or LF).
fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(sources: Vec<TenantSource>) -> TenantResolver {
        TenantResolver::new(&TenantConfig {
            sources,
            ..TenantConfig::default()
        })
        .unwrap_or_else(|e| panic!("config rejected: {e}"))
    }

    fn header() -> TenantSource {
        TenantSource::Header {
            name: default_header_name(),
        }
    }

    fn host(domains: &[&str], ignore: &[&str]) -> TenantSource {
        TenantSource::HostSubdomain {
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            ignore: ignore.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    fn baggage() -> TenantSource {
        TenantSource::Baggage {
            key: default_baggage_key(),
        }
    }

    fn path(pattern: &str) -> TenantSource {
        TenantSource::PathPrefix {
            pattern: pattern.to_owned(),
        }
    }

    fn resolve(r: &mut TenantResolver, req: RequestView) -> (String, &'static str) {
        let (label, source) = r.resolve(&req);
        (label.to_string(), source)
    }

    fn owned(label: &str, source: &'static str) -> (String, &'static str) {
        (label.to_owned(), source)
    }

    #[test]
    fn header_source() {
        let mut r = resolver(vec![header()]);
        assert_eq!(r.header_name(), Some("x-tenant-id"));
        let req = |v| RequestView {
            tenant_header: Some(v),
            ..RequestView::default()
        };
        assert_eq!(resolve(&mut r, req("acme")), owned("acme", "header"));
        assert_eq!(resolve(&mut r, req("Globex")), owned("globex", "header"));
        assert_eq!(
            resolve(&mut r, req(" initech\t")),
            owned("initech", "header")
        );
        assert_eq!(resolve(&mut r, req("a.b_c-9")), owned("a.b_c-9", "header"));
        assert_eq!(resolve(&mut r, req("")), owned(UNKNOWN, "none"));
        assert_eq!(
            resolve(&mut r, RequestView::default()),
            owned(UNKNOWN, "none")
        );
        assert_eq!(resolver(vec![baggage()]).header_name(), None);
    }

    #[test]
    fn host_subdomain_source() {
        let mut r = resolver(vec![host(
            &["platform.example", "EU.platform.example.", "other.test"],
            &["www", "API"],
        )]);
        let req = |h| RequestView {
            host: Some(h),
            ..RequestView::default()
        };
        for (h, want) in [
            ("acme.platform.example", "acme"),
            ("acme.platform.example:8443", "acme"),
            ("ACME.Platform.Example", "acme"),
            ("acme.platform.example.", "acme"),
            ("acme.platform.example.:80", "acme"),
            ("globex.eu.platform.example", "globex"),
            ("initech.other.test", "initech"),
        ] {
            assert_eq!(resolve(&mut r, req(h)), owned(want, "host"), "{h}");
        }
        for h in [
            "platform.example",
            "www.platform.example",
            "Api.platform.example",
            "x.acme.platform.example",
            "acme.platform.example.evil.test",
            "acme-platform.example",
            "evilplatform.example",
            ".platform.example",
            "[::1]:8080",
            "::1",
            "10.0.0.1:80",
            "",
        ] {
            assert_eq!(resolve(&mut r, req(h)), owned(UNKNOWN, "none"), "{h}");
        }
        assert_eq!(
            resolve(&mut r, req("ac%6de.platform.example")),
            owned(INVALID, "none")
        );
        // No domains configured: inactive.
        let mut inactive = resolver(vec![host(&[], &[])]);
        assert_eq!(
            resolve(&mut inactive, req("acme.platform.example")),
            owned(UNKNOWN, "none")
        );
    }

    #[test]
    fn baggage_source_uses_the_propagator() {
        let mut r = resolver(vec![baggage()]);
        let req = |b| RequestView {
            baggage: Some(b),
            ..RequestView::default()
        };
        for (b, want) in [
            ("tenant.id=acme", "acme"),
            ("userId=alice,tenant.id=acme,serverNode=DF%2028", "acme"),
            ("tenant.id=acme;ttl=60;origin=edge,other=1", "acme"),
            (" tenant.id = acme ", "acme"),
            ("tenant.id=ac%6De", "acme"),
            ("tenant.id=%41CME", "acme"),
        ] {
            assert_eq!(resolve(&mut r, req(b)), owned(want, "baggage"), "{b}");
        }
        assert_eq!(resolve(&mut r, req("other=acme")), owned(UNKNOWN, "none"));
        assert_eq!(
            resolve(&mut r, req("Tenant.ID=acme")),
            owned(UNKNOWN, "none")
        );
        assert_eq!(resolve(&mut r, req("garbage")), owned(UNKNOWN, "none"));
        assert_eq!(
            resolve(&mut r, req("tenant.id=a%20b")),
            owned(INVALID, "none")
        );
        assert_eq!(
            resolve(&mut r, req("tenant.id=ev%0d%0ail")),
            owned(INVALID, "none")
        );
        assert_eq!(r.stats().invalid.baggage, 2);
        // Oversized baggage is dropped whole by the propagator (W3C limit 8192 bytes).
        let big = format!("tenant.id=acme,pad={}", "x".repeat(9000));
        assert_eq!(resolve(&mut r, req(&big)), owned(UNKNOWN, "none"));
    }

    #[test]
    fn path_prefix_source_at_different_positions() {
        let req = |p| RequestView {
            path: p,
            ..RequestView::default()
        };
        let mut root = resolver(vec![path("/{tenant}/")]);
        assert_eq!(
            resolve(&mut root, req("/acme/posts/1")),
            owned("acme", "path")
        );
        assert_eq!(resolve(&mut root, req("/")), owned(UNKNOWN, "none"));

        let mut t = resolver(vec![path("/t/{tenant}/")]);
        assert_eq!(resolve(&mut t, req("/t/acme/posts")), owned("acme", "path"));
        assert_eq!(resolve(&mut t, req("/t/Acme")), owned("acme", "path"));
        assert_eq!(resolve(&mut t, req("//t//acme?x=1")), owned("acme", "path"));
        assert_eq!(
            resolve(&mut t, req("/t/acme?tenant=evil")),
            owned("acme", "path")
        );
        assert_eq!(resolve(&mut t, req("/t/")), owned(UNKNOWN, "none"));
        assert_eq!(resolve(&mut t, req("/x/t/acme")), owned(UNKNOWN, "none"));
        assert_eq!(resolve(&mut t, req("/T/acme")), owned(UNKNOWN, "none"));
        assert_eq!(resolve(&mut t, req("")), owned(UNKNOWN, "none"));

        let mut deep = resolver(vec![path("/api/{version}/communities/{tenant}/boards")]);
        assert_eq!(
            resolve(&mut deep, req("/api/v2/communities/acme/boards/7")),
            owned("acme", "path")
        );
        // The whole pattern must match, also after the tenant segment.
        assert_eq!(
            resolve(&mut deep, req("/api/v2/communities/acme/posts")),
            owned(UNKNOWN, "none")
        );
        assert_eq!(
            resolve(&mut deep, req("/api/v2/communities/acme")),
            owned(UNKNOWN, "none")
        );
    }

    #[test]
    fn pod_label_and_namespace_sources() {
        let labels = BTreeMap::from([
            ("tenant".to_owned(), "Acme".to_owned()),
            ("app".to_owned(), "api".to_owned()),
        ]);
        let mut r = resolver(vec![
            TenantSource::PodLabel {
                name: "tenant".to_owned(),
            },
            TenantSource::Namespace,
        ]);
        let req = RequestView {
            pod_labels: Some(&labels),
            namespace: Some("tenant-globex"),
            ..RequestView::default()
        };
        assert_eq!(resolve(&mut r, req), owned("acme", "pod_label"));
        let no_label = BTreeMap::new();
        let req = RequestView {
            pod_labels: Some(&no_label),
            namespace: Some("tenant-globex"),
            ..RequestView::default()
        };
        assert_eq!(resolve(&mut r, req), owned("tenant-globex", "namespace"));
        assert_eq!(
            resolve(&mut r, RequestView::default()),
            owned(UNKNOWN, "none")
        );
    }

    #[test]
    fn chain_order_and_fallthrough_on_invalid() {
        let mut r = resolver(vec![
            header(),
            host(&["platform.example"], &["www"]),
            baggage(),
            path("/t/{tenant}"),
            TenantSource::Namespace,
        ]);
        let full = RequestView {
            tenant_header: Some("from-header"),
            host: Some("from-host.platform.example"),
            path: "/t/from-path",
            baggage: Some("tenant.id=from-baggage"),
            pod_labels: None,
            namespace: Some("from-namespace"),
        };
        assert_eq!(resolve(&mut r, full), owned("from-header", "header"));
        // Baggage never overrides an earlier source, and is consulted in its place.
        let no_header = RequestView {
            tenant_header: None,
            ..full
        };
        assert_eq!(resolve(&mut r, no_header), owned("from-host", "host"));
        let invalid_header_and_host = RequestView {
            tenant_header: Some("bad value!"),
            host: Some("bad_.x.platform.example"),
            ..full
        };
        assert_eq!(
            resolve(&mut r, invalid_header_and_host),
            owned("from-baggage", "baggage")
        );
        let only_later = RequestView {
            tenant_header: Some("-bad"),
            host: Some("www.platform.example"),
            baggage: Some("tenant.id=%FF"),
            ..full
        };
        assert_eq!(resolve(&mut r, only_later), owned("from-path", "path"));
        let only_namespace = RequestView {
            path: "/",
            ..only_later
        };
        assert_eq!(
            resolve(&mut r, only_namespace),
            owned("from-namespace", "namespace")
        );
        let all_bad = RequestView {
            namespace: Some("UPPER_ok_but_\u{e9}"),
            ..only_namespace
        };
        assert_eq!(resolve(&mut r, all_bad), owned(INVALID, "none"));
        let stats = r.stats();
        assert_eq!(stats.invalid.header, 4);
        assert_eq!(
            stats.invalid.host, 0,
            "www is ignored, bad_.x is not directly under"
        );
        assert_eq!(stats.invalid.namespace, 1);
        assert_eq!(
            stats.invalid.iter().map(|(_, n)| n).sum::<u64>(),
            5,
            "{stats:?}"
        );
    }

    #[test]
    fn allowlist_rejects_unknown_tenants_and_falls_through() {
        let mut r = TenantResolver::new(&TenantConfig {
            sources: vec![header(), baggage()],
            allowlist: vec!["acme".to_owned(), "Globex".to_owned()],
            ..TenantConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let req = |h, b| RequestView {
            tenant_header: h,
            baggage: b,
            ..RequestView::default()
        };
        assert_eq!(
            resolve(&mut r, req(Some("ACME"), None)),
            owned("acme", "header")
        );
        assert_eq!(
            resolve(&mut r, req(Some("globex"), None)),
            owned("globex", "header")
        );
        assert_eq!(
            resolve(&mut r, req(Some("mallory"), None)),
            owned(INVALID, "none")
        );
        assert_eq!(
            resolve(&mut r, req(Some("mallory"), Some("tenant.id=acme"))),
            owned("acme", "baggage")
        );
        assert_eq!(resolve(&mut r, req(None, None)), owned(UNKNOWN, "none"));
        let stats = r.stats();
        assert_eq!(stats.not_allowlisted, 2);
        assert_eq!(stats.distinct_tenants, 2);
    }

    #[test]
    fn cap_folds_into_other_and_counts() {
        let mut r = TenantResolver::new(&TenantConfig {
            sources: vec![header()],
            max_tenants: 2,
            ..TenantConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let req = |h| RequestView {
            tenant_header: Some(h),
            ..RequestView::default()
        };
        let (acme, _) = r.resolve(&req("acme"));
        assert_eq!(resolve(&mut r, req("globex")), owned("globex", "header"));
        assert_eq!(resolve(&mut r, req("initech")), owned(OTHER, "header"));
        assert_eq!(resolve(&mut r, req("hooli")), owned(OTHER, "header"));
        // Known tenants keep their label, and the very same interned string.
        let (again, _) = r.resolve(&req("ACME"));
        assert!(Arc::ptr_eq(&acme, &again));
        let stats = r.stats();
        assert_eq!(stats.overflowed, 2);
        assert_eq!(stats.distinct_tenants, 2);
    }

    #[test]
    fn hostile_values_are_invalid() {
        let mut r = resolver(vec![header()]);
        let long = "a".repeat(64);
        let huge = "a".repeat(1 << 20);
        for v in [
            long.as_str(),
            huge.as_str(),
            "acme\r\nX-Injected: 1",
            "acme\r\n",
            "acme\n",
            "acme\0",
            "acmé",
            "ACME\u{FFFD}",
            "\u{0130}stanbul",
            "..",
            "../etc",
            ".acme",
            "-acme",
            "_other",
            "unknown",
            "INVALID",
            "acme,globex",
            "acme globex",
            "acme/globex",
            "{acme}",
            "ac\"me",
            "%61cme",
        ] {
            assert_eq!(
                resolve(
                    &mut r,
                    RequestView {
                        tenant_header: Some(v),
                        ..RequestView::default()
                    }
                ),
                owned(INVALID, "none"),
                "{v:?}"
            );
        }
        let max = "a".repeat(63);
        assert_eq!(
            resolve(
                &mut r,
                RequestView {
                    tenant_header: Some(&max),
                    ..RequestView::default()
                }
            ),
            owned(&max, "header")
        );
        assert_eq!(r.stats().distinct_tenants, 1);
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn random_tenants_keep_the_label_set_bounded() {
        let mut r = resolver(vec![header(), host(&["platform.example"], &[]), baggage()]);
        let max = TenantConfig::default().max_tenants;
        let mut labels = HashSet::new();
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        for i in 0..100_000u32 {
            let n = rng.next();
            let id = format!("t{n:x}");
            let host = format!("{id}.platform.example");
            let baggage = format!("tenant.id={id}");
            let bad = format!("bad {n}");
            let req = match n % 5 {
                0 => RequestView {
                    tenant_header: Some(&id),
                    ..RequestView::default()
                },
                1 => RequestView {
                    host: Some(&host),
                    ..RequestView::default()
                },
                2 => RequestView {
                    baggage: Some(&baggage),
                    ..RequestView::default()
                },
                3 => RequestView {
                    tenant_header: Some(&bad),
                    ..RequestView::default()
                },
                _ => RequestView::default(),
            };
            let (label, _) = r.resolve(&req);
            labels.insert(label);
            assert!(
                labels.len() <= max + 3,
                "after {i} requests: {}",
                labels.len()
            );
        }
        assert_eq!(labels.len(), max + 3);
        let stats = r.stats();
        assert_eq!(stats.distinct_tenants, max);
        assert!(stats.overflowed > 50_000, "{stats:?}");
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_keys() {
        let cfg: TenantConfig = toml::from_str(
            r#"
            max_tenants = 500
            allowlist = ["acme"]
            sources = [
                { source = "header" },
                { source = "host_subdomain", domains = ["platform.example"], ignore = ["www"] },
                { source = "baggage" },
                { source = "path_prefix", pattern = "/t/{tenant}/" },
                { source = "pod_label", name = "platform.example/tenant" },
                { source = "namespace" },
            ]
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.sources[0], header());
        assert_eq!(cfg.sources[2], baggage());
        assert_eq!(cfg.sources[5], TenantSource::Namespace);
        assert_eq!(cfg.max_len, 63);
        cfg.validate().unwrap_or_else(|e| panic!("{e}"));
        TenantConfig::default()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            toml::from_str::<TenantConfig>("").unwrap_or_else(|e| panic!("{e}")),
            TenantConfig::default()
        );
        for bad in [
            "max_tenant = 5",
            "sources = [{ source = \"header\", nam = \"x\" }]",
            "sources = [{ source = \"cookie\" }]",
            "sources = [{ source = \"path_prefix\" }]",
        ] {
            assert!(toml::from_str::<TenantConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_names_the_key() {
        let with = |sources: Vec<TenantSource>| TenantConfig {
            sources,
            ..TenantConfig::default()
        };
        let cases = [
            (
                TenantConfig {
                    max_tenants: 0,
                    ..TenantConfig::default()
                },
                "http.tenant.max_tenants:",
            ),
            (
                TenantConfig {
                    max_len: 254,
                    ..TenantConfig::default()
                },
                "http.tenant.max_len:",
            ),
            (
                with(vec![baggage(), header(), header()]),
                "http.tenant.sources[2]:",
            ),
            (
                with(vec![TenantSource::Header {
                    name: "X Tenant".to_owned(),
                }]),
                "http.tenant.sources[0].name:",
            ),
            (
                with(vec![TenantSource::Header {
                    name: "Cookie".to_owned(),
                }]),
                "http.tenant.sources[0].name:",
            ),
            (
                with(vec![
                    header(),
                    host(&["ok.example", "bad_domain.example"], &[]),
                ]),
                "http.tenant.sources[1].domains[1]:",
            ),
            (
                with(vec![host(&["ok.example"], &["w.w"])]),
                "http.tenant.sources[0].ignore[0]:",
            ),
            (
                with(vec![TenantSource::Baggage { key: String::new() }]),
                "http.tenant.sources[0].key:",
            ),
            (
                with(vec![path("t/{tenant}")]),
                "http.tenant.sources[0].pattern:",
            ),
            (
                with(vec![path("/t/{id}")]),
                "http.tenant.sources[0].pattern:",
            ),
            (
                with(vec![path("/{tenant}/{tenant}")]),
                "http.tenant.sources[0].pattern:",
            ),
            (
                with(vec![path("/t/x{tenant}")]),
                "http.tenant.sources[0].pattern:",
            ),
            (
                with(vec![path("/t//{tenant}")]),
                "http.tenant.sources[0].pattern:",
            ),
            (
                with(vec![TenantSource::PodLabel {
                    name: "a b".to_owned(),
                }]),
                "http.tenant.sources[0].name:",
            ),
            (
                TenantConfig {
                    allowlist: vec!["acme".to_owned(), "-bad".to_owned()],
                    ..TenantConfig::default()
                },
                "http.tenant.allowlist[1]:",
            ),
            (
                TenantConfig {
                    allowlist: vec!["unknown".to_owned()],
                    ..TenantConfig::default()
                },
                "http.tenant.allowlist[0]:",
            ),
            (
                TenantConfig {
                    allowlist: vec!["a".to_owned(), "b".to_owned(), "B".to_owned()],
                    max_tenants: 1,
                    ..TenantConfig::default()
                },
                "http.tenant.allowlist:",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().expect_err(key);
            assert!(err.starts_with(key), "{err:?} should name {key}");
            assert_eq!(TenantResolver::new(&cfg).expect_err(key), err);
        }
    }
}
