//! Low-cardinality `http.route` values.
//!
//! `http.route` must be a template (`/api/posts/{id}`), never a raw path: a raw path carries ids
//! and would make one series per request. [`RouteTable`] turns a request path into a route in two
//! ways:
//! - **configured templates** per service (`[http.routes]`), most specific first;
//! - **automatic templating** (`auto = true`): each path segment that looks like a value (number,
//!   UUID, hex, token, email, percent-encoded or non-ASCII junk) becomes a placeholder, and only
//!   the first [`MAX_AUTO_SEGMENTS`] segments are kept.
//!
//! Automatic routes can still be unbounded (a path of random words), so each service keeps at most
//! `max_routes_per_service` of them and at most [`MAX_SERVICES`] services are tracked; beyond
//! either bound the route is [`OTHER`], and every such fold is counted ([`RouteTable::overflowed`]).
//!
//! Paths are cleaned the way the platform's Go services route them (`net/http` redirects to
//! `path.Clean`): the query string and fragment are cut, empty and `.` segments are dropped and
//! `..` removes the segment before it. Memory per call is bounded whatever the path's length.

use std::collections::HashMap;

use crate::aggregate::{FastMap, FastSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Route of a path that did not fit under the per-service or the per-table cap.
pub const OTHER: &str = "_other";
/// Route of a path no template matched when automatic templating is off.
pub const UNMATCHED: &str = "_unmatched";
/// Most services a [`RouteTable`] keeps automatic routes for; the automatic routes of any further
/// service are [`OTHER`] until [`RouteTable::forget_service`] frees a slot.
pub const MAX_SERVICES: usize = 1024;
/// Segments an automatic route keeps; a deeper path ends in `/*`.
pub const MAX_AUTO_SEGMENTS: usize = 8;
/// Segments a template may have (and segments of a path kept for matching).
const MAX_SEGMENTS: usize = 32;
/// Bounds enforced by [`RoutesConfig::validate`].
const MAX_ROUTES_PER_SERVICE: (usize, usize) = (1, 100_000);
const MAX_TEMPLATES_PER_SERVICE: usize = 1000;
const MAX_TEMPLATE_LEN: usize = 512;
const MAX_SERVICE_LEN: usize = 253;
/// A segment longer than this is a `{token}`.
const TOKEN_LEN: usize = 32;
/// A segment of letters and digits at least this long is a `{token}`.
const MIXED_TOKEN_LEN: usize = 16;
/// A hex segment (with at least one digit) at least this long is a `{hex}`.
const HEX_LEN: usize = 8;

/// `[http.routes]`: how request paths become `http.route` values.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// Route templates per service. A path gets the most specific template of its service that
    /// matches: more literal segments first, then the order listed. Default: none.
    pub services: Vec<ServiceRoutes>,
    /// Most distinct automatic routes per service; further ones are folded into `"_other"` and
    /// counted. Configured templates do not count (the config already bounds them).
    /// Between 1 and 100000. Default `200`.
    pub max_routes_per_service: usize,
    /// Template paths no configured template matches by replacing their variable segments with
    /// placeholders (`{id}`, `{uuid}`, `{hex}`, `{token}`, `{value}`). When `false`, such paths
    /// get the route `"_unmatched"`. Default `true`.
    pub auto: bool,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            // A typical REST service has tens of routes; 200 leaves room without letting one
            // noisy service multiply the series count.
            max_routes_per_service: 200,
            // Without templates, raw paths must still never become labels.
            auto: true,
        }
    }
}

/// `[[http.routes.services]]`: the route templates of one service.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
// `Default` is derived on purpose: an empty service name, which `validate` rejects, and no
// templates; there is no meaningful default service.
#[serde(deny_unknown_fields, default)]
pub struct ServiceRoutes {
    /// The workload label these templates apply to. Required, unique.
    pub service: String,
    /// Templates such as `"/api/posts/{id}"` (`{name}` matches one segment) or `"/static/*"`
    /// (a trailing `*` matches the rest of the path, including nothing). The route is the
    /// template as written. Default: none.
    pub templates: Vec<String>,
}

impl RoutesConfig {
    /// Checks bounds and template syntax; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let (min, max) = MAX_ROUTES_PER_SERVICE;
        if !(min..=max).contains(&self.max_routes_per_service) {
            return Err(format!(
                "http.routes.max_routes_per_service: {} is not between {min} and {max}",
                self.max_routes_per_service
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            let key = format!("http.routes.services[{i}]");
            if svc.service.is_empty() {
                return Err(format!("{key}.service: must not be empty"));
            }
            if svc.service.len() > MAX_SERVICE_LEN || svc.service.chars().any(char::is_control) {
                return Err(format!(
                    "{key}.service: must be at most {MAX_SERVICE_LEN} bytes without control \
                     characters"
                ));
            }
            if let Some(first) = seen.insert(&svc.service, i) {
                return Err(format!(
                    "{key}.service: {:?} is already listed in http.routes.services[{first}]",
                    svc.service
                ));
            }
            if svc.templates.len() > MAX_TEMPLATES_PER_SERVICE {
                return Err(format!(
                    "{key}.templates: {} templates, at most {MAX_TEMPLATES_PER_SERVICE} allowed",
                    svc.templates.len()
                ));
            }
            let mut templates: HashMap<&str, usize> = HashMap::new();
            for (j, template) in svc.templates.iter().enumerate() {
                Template::parse(template)
                    .map_err(|e| format!("{key}.templates[{j}]: {template:?}: {e}"))?;
                if let Some(first) = templates.insert(template, j) {
                    return Err(format!(
                        "{key}.templates[{j}]: {template:?} is already listed as templates[{first}]"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateSegment {
    Literal(Box<str>),
    /// `{name}`: any one segment.
    Param,
}

#[derive(Debug)]
struct Template {
    segments: Vec<TemplateSegment>,
    /// Ends in `*`: matches any number of further segments, including none.
    rest: bool,
    literals: usize,
    label: Arc<str>,
}

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_TEMPLATE_LEN {
            return Err(format!("longer than {MAX_TEMPLATE_LEN} bytes"));
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err("must start with '/'".to_owned());
        };
        // A trailing slash is accepted and ignored, like in paths.
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segments = Vec::new();
        let mut rest = false;
        if !body.is_empty() {
            let parts: Vec<&str> = body.split('/').collect();
            for (k, part) in parts.iter().enumerate() {
                if part.is_empty() {
                    return Err("empty segment ('//')".to_owned());
                }
                if *part == "*" {
                    if k + 1 != parts.len() {
                        return Err("'*' is only allowed as the last segment".to_owned());
                    }
                    rest = true;
                } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
                {
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        return Err(format!(
                            "placeholder {part:?} must be {{name}} with a name of [A-Za-z0-9_-]"
                        ));
                    }
                    segments.push(TemplateSegment::Param);
                } else if *part == "." || *part == ".." {
                    return Err(format!("segment {part:?} can never match a cleaned path"));
                } else if let Some(bad) = part
                    .chars()
                    .find(|&c| !c.is_ascii_graphic() || matches!(c, '{' | '}' | '*' | '?' | '#'))
                {
                    return Err(format!(
                        "segment {part:?} contains {bad:?}; literal segments are printable ASCII \
                         without '{{', '}}', '*', '?' or '#', placeholders a whole segment"
                    ));
                } else {
                    segments.push(TemplateSegment::Literal((*part).into()));
                }
            }
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(format!("more than {MAX_SEGMENTS} segments"));
        }
        let literals = segments
            .iter()
            .filter(|s| matches!(s, TemplateSegment::Literal(_)))
            .count();
        Ok(Self {
            segments,
            rest,
            literals,
            label: Arc::from(text),
        })
    }

    /// `stored` holds the first `min(depth, MAX_SEGMENTS)` segments of the cleaned `path`.
    fn matches(&self, path: &str, stored: &[(usize, usize)], depth: usize) -> bool {
        let len_ok = if self.rest {
            depth >= self.segments.len()
        } else {
            depth == self.segments.len()
        };
        // `segments.len() <= MAX_SEGMENTS`, so every segment compared is stored.
        len_ok
            && self
                .segments
                .iter()
                .zip(stored)
                .all(|(t, &(s, e))| match t {
                    TemplateSegment::Param => true,
                    TemplateSegment::Literal(l) => **l == path[s..e],
                })
    }
}

/// Turns request paths into bounded `http.route` values; see the module docs.
#[derive(Debug)]
pub struct RouteTable {
    /// Per service, most specific first.
    templates: FastMap<Box<str>, Vec<Template>>,
    auto: bool,
    max_routes_per_service: usize,
    /// Automatic routes seen per service (interned labels).
    services: FastMap<Box<str>, FastSet<Arc<str>>>,
    overflowed: u64,
    other: Arc<str>,
    unmatched: Arc<str>,
    /// Reused per call so that a known route costs no allocation: byte ranges of the cleaned
    /// path's first segments, and the automatic route being built.
    segments: Vec<(usize, usize)>,
    scratch: String,
}

impl RouteTable {
    /// Builds the table; fails with [`RoutesConfig::validate`]'s message on a bad config.
    pub fn new(cfg: &RoutesConfig) -> Result<Self, String> {
        cfg.validate()?;
        let mut templates = FastMap::default();
        for svc in &cfg.services {
            let mut parsed = svc
                .templates
                .iter()
                .map(|t| Template::parse(t))
                .collect::<Result<Vec<_>, _>>()?;
            // Stable: equal specificity keeps the configured order.
            parsed.sort_by_key(|t| std::cmp::Reverse(t.literals));
            templates.insert(svc.service.as_str().into(), parsed);
        }
        Ok(Self {
            templates,
            auto: cfg.auto,
            max_routes_per_service: cfg.max_routes_per_service,
            services: FastMap::default(),
            overflowed: 0,
            other: Arc::from(OTHER),
            unmatched: Arc::from(UNMATCHED),
            segments: Vec::with_capacity(MAX_SEGMENTS),
            scratch: String::new(),
        })
    }

    /// The route for a path (normally without query string; one is cut off anyway): the most
    /// specific configured template of `service` that matches (more literal segments first, then
    /// configuration order); else, with `auto`, the cleaned path with its variable segments
    /// replaced by placeholders — decimal numbers `{id}`, UUIDs `{uuid}`, hex strings of 8+
    /// characters with a digit `{hex}`, emails, percent-encoded and other non-literal text
    /// `{value}`, tokens (more than 32 characters, or 16+ mixing letters and digits) `{token}` —
    /// keeping at most [`MAX_AUTO_SEGMENTS`] segments (deeper paths end in `/*`); the empty path
    /// is `/`. Automatic routes beyond the per-service cap, or of a service beyond
    /// [`MAX_SERVICES`], are [`OTHER`] (counted). With `auto` off and no match: [`UNMATCHED`].
    pub fn route(&mut self, service: &str, path: &str) -> Arc<str> {
        let path = path_only(path);
        let depth = clean_segments(path, &mut self.segments);
        if let Some(templates) = self.templates.get(service)
            && let Some(t) = templates
                .iter()
                .find(|t| t.matches(path, &self.segments, depth))
        {
            return t.label.clone();
        }
        if !self.auto {
            return self.unmatched.clone();
        }

        self.scratch.clear();
        let kept = depth.min(MAX_AUTO_SEGMENTS);
        for &(s, e) in &self.segments[..kept] {
            let segment = &path[s..e];
            self.scratch.push('/');
            self.scratch
                .push_str(placeholder(segment).unwrap_or(segment));
        }
        if depth > kept {
            self.scratch.push_str("/*");
        }
        if self.scratch.is_empty() {
            self.scratch.push('/');
        }

        if !self.services.contains_key(service) {
            if self.services.len() >= MAX_SERVICES {
                self.overflowed += 1;
                return self.other.clone();
            }
            self.services.insert(service.into(), FastSet::default());
        }
        let Some(routes) = self.services.get_mut(service) else {
            unreachable!("the service was inserted above");
        };
        if let Some(route) = routes.get(self.scratch.as_str()) {
            return route.clone();
        }
        if routes.len() >= self.max_routes_per_service {
            self.overflowed += 1;
            return self.other.clone();
        }
        let route: Arc<str> = Arc::from(self.scratch.as_str());
        routes.insert(route.clone());
        route
    }

    /// Requests whose route was folded into [`OTHER`]: beyond `max_routes_per_service`, or of a
    /// service beyond [`MAX_SERVICES`].
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Drops the automatic routes of a service (e.g. its workload went away), freeing its slot
    /// and its route budget. Its configured templates stay.
    pub fn forget_service(&mut self, service: &str) {
        self.services.remove(service);
    }

    /// Services with automatic routes tracked.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Distinct automatic routes tracked for a service.
    pub fn routes_of(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, FastSet::len)
    }
}

/// Cuts a query string or fragment, and the scheme and authority of an absolute-form target
/// (`http://host/path`), so that neither ever reaches a label.
pub(crate) fn path_only(target: &str) -> &str {
    // A byte scan: both are ASCII, so the cut is at a character boundary.
    let target = target
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .map_or(target, |end| &target[..end]);
    if !target.starts_with('/')
        && let Some(scheme_end) = target.find("://")
    {
        let after = &target[scheme_end + 3..];
        return after.find('/').map_or("", |start| &after[start..]);
    }
    target
}

/// Splits `path` into cleaned segments (no empty or `.` segments, `..` removes the one before),
/// storing the byte ranges of the first [`MAX_SEGMENTS`] in `stored`; returns the full depth.
fn clean_segments(path: &str, stored: &mut Vec<(usize, usize)>) -> usize {
    stored.clear();
    let mut depth = 0usize;
    let mut start = 0;
    while start <= path.len() {
        let end = path.as_bytes()[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(path.len(), |i| start + i);
        match &path[start..end] {
            "" | "." => {}
            ".." => {
                // Above the root, `..` stays at the root.
                depth = depth.saturating_sub(1);
                stored.truncate(depth);
            }
            _ => {
                if depth < MAX_SEGMENTS {
                    stored.push((start, end));
                }
                depth += 1;
            }
        }
        start = end + 1;
    }
    depth
}

/// The placeholder replacing a variable-looking segment, or `None` to keep it.
fn placeholder(segment: &str) -> Option<&'static str> {
    let bytes = segment.as_bytes();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == bytes.len() {
        return Some("{id}");
    }
    if is_uuid(bytes) {
        return Some("{uuid}");
    }
    if bytes.len() >= HEX_LEN && digits > 0 && bytes.iter().all(u8::is_ascii_hexdigit) {
        return Some("{hex}");
    }
    // A literal is what a route author would write: unreserved ASCII (and ':'). Anything else
    // (emails, percent-encoding, non-ASCII, replacement characters, controls, quotes) is a value,
    // which also keeps label values free of characters that need escaping.
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':'))
    {
        return Some("{value}");
    }
    let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
    if bytes.len() > TOKEN_LEN || (bytes.len() >= MIXED_TOKEN_LEN && letters > 0 && digits > 0) {
        return Some("{token}");
    }
    None
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(services: &[(&str, &[&str])]) -> RouteTable {
        RouteTable::new(&RoutesConfig {
            services: services
                .iter()
                .map(|(s, t)| ServiceRoutes {
                    service: (*s).to_owned(),
                    templates: t.iter().map(|t| (*t).to_owned()).collect(),
                })
                .collect(),
            ..RoutesConfig::default()
        })
        .unwrap_or_else(|e| panic!("config rejected: {e}"))
    }

    fn auto(path: &str) -> String {
        table(&[]).route("svc", path).to_string()
    }

    #[test]
    fn templates_match_and_most_specific_wins() {
        let mut t = table(&[(
            "api",
            &[
                "/api/users/{user}",
                "/api/users/me",
                "/api/users/{user}/posts/{post}",
                "/api/{a}/x",
                "/api/x/{b}",
            ],
        )]);
        assert_eq!(&*t.route("api", "/api/users/42"), "/api/users/{user}");
        assert_eq!(&*t.route("api", "/api/users/me"), "/api/users/me");
        assert_eq!(
            &*t.route("api", "/api/users/7/posts/9"),
            "/api/users/{user}/posts/{post}"
        );
        // Same number of literals: the one listed first.
        assert_eq!(&*t.route("api", "/api/x/x"), "/api/{a}/x");
        // Trailing slash and empty segments do not change the match.
        assert_eq!(&*t.route("api", "/api//users/42/"), "/api/users/{user}");
        // Templates are per service.
        assert_eq!(&*t.route("web", "/api/users/42"), "/api/users/{id}");
        // No template matches: automatic.
        assert_eq!(
            &*t.route("api", "/api/users/42/likes"),
            "/api/users/{id}/likes"
        );
    }

    #[test]
    fn trailing_star_matches_the_rest() {
        let mut t = table(&[("web", &["/static/*", "/static/special.css", "/"])]);
        assert_eq!(&*t.route("web", "/static/js/app.3f9a.js"), "/static/*");
        assert_eq!(
            &*t.route("web", "/static/a/b/c/d/e/f/g/h/i/j/k"),
            "/static/*"
        );
        assert_eq!(&*t.route("web", "/static"), "/static/*");
        assert_eq!(
            &*t.route("web", "/static/special.css"),
            "/static/special.css"
        );
        assert_eq!(&*t.route("web", "/staticx/a"), "/staticx/a");
        assert_eq!(&*t.route("web", ""), "/");
        // Deeper than the 32 segments kept for matching still matches a `*` template.
        let deep = format!("/static{}", "/x".repeat(100));
        assert_eq!(&*t.route("web", &deep), "/static/*");
        let mut catch_all = table(&[("web", &["/*"])]);
        assert_eq!(&*catch_all.route("web", "/anything/at/all"), "/*");
        assert_eq!(&*catch_all.route("web", "/"), "/*");
    }

    #[test]
    fn every_placeholder_kind() {
        assert_eq!(auto("/api/posts/123"), "/api/posts/{id}");
        assert_eq!(
            auto("/api/posts/0c6b3c6e-6a4f-4bb4-9c1a-7f2d3e4c5b6A/comments"),
            "/api/posts/{uuid}/comments"
        );
        assert_eq!(auto("/blobs/deadbeef01"), "/blobs/{hex}");
        assert_eq!(
            auto("/commits/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"),
            "/commits/{hex}"
        );
        // Hex-looking words without a digit, and short hex, stay.
        assert_eq!(auto("/feed/facade/cafe12"), "/feed/facade/cafe12");
        assert_eq!(auto("/s/aB3dE5fG7hJ9kL1m"), "/s/{token}");
        assert_eq!(auto(&format!("/s/{}", "a".repeat(33))), "/s/{token}");
        assert_eq!(
            auto(&format!("/s/{}", "a".repeat(32))),
            format!("/s/{}", "a".repeat(32))
        );
        assert_eq!(auto("/users/jane.doe@example.com"), "/users/{value}");
        assert_eq!(auto("/search/caf%C3%A9"), "/search/{value}");
        assert_eq!(auto("/wiki/café"), "/wiki/{value}");
        assert_eq!(auto("/v1/things:batchGet"), "/v1/things:batchGet");
        assert_eq!(auto("/api/v2/posts"), "/api/v2/posts");
        assert_eq!(auto(""), "/");
        assert_eq!(auto("/"), "/");
        assert_eq!(auto("/a/b/c/d/e/f/g/h"), "/a/b/c/d/e/f/g/h");
        assert_eq!(auto("/a/b/c/d/e/f/g/h/i/1"), "/a/b/c/d/e/f/g/h/*");
    }

    #[test]
    fn per_service_cap_folds_into_other_and_counts() {
        let mut t = RouteTable::new(&RoutesConfig {
            services: vec![ServiceRoutes {
                service: "api".to_owned(),
                templates: vec!["/t/{x}".to_owned()],
            }],
            max_routes_per_service: 3,
            auto: true,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        for p in ["/a", "/b", "/c"] {
            assert_eq!(&*t.route("api", p), p);
        }
        assert_eq!(&*t.route("api", "/d"), OTHER);
        assert_eq!(&*t.route("api", "/e/1"), OTHER);
        assert_eq!(t.overflowed(), 2);
        // Known routes and templates still resolve; other services have their own budget.
        assert_eq!(&*t.route("api", "/b"), "/b");
        assert_eq!(&*t.route("api", "/t/9"), "/t/{x}");
        assert_eq!(&*t.route("web", "/d"), "/d");
        assert_eq!(t.overflowed(), 2);
        assert_eq!(t.routes_of("api"), 3);
        t.forget_service("api");
        assert_eq!(&*t.route("api", "/d"), "/d");
    }

    #[test]
    fn service_cap_folds_into_other_until_forgotten() {
        let mut t = table(&[("configured", &["/x"])]);
        for i in 0..MAX_SERVICES {
            assert_eq!(&*t.route(&format!("svc{i}"), "/p"), "/p");
        }
        assert_eq!(&*t.route("one-too-many", "/p"), OTHER);
        assert_eq!(t.overflowed(), 1);
        // Templates need no tracking.
        assert_eq!(&*t.route("configured", "/x"), "/x");
        assert_eq!(t.services(), MAX_SERVICES);
        t.forget_service("svc0");
        assert_eq!(&*t.route("one-too-many", "/p"), "/p");
    }

    #[test]
    fn unmatched_without_auto() {
        let mut t = RouteTable::new(&RoutesConfig {
            services: vec![ServiceRoutes {
                service: "api".to_owned(),
                templates: vec!["/api/posts/{id}".to_owned()],
            }],
            auto: false,
            ..RoutesConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*t.route("api", "/api/posts/1"), "/api/posts/{id}");
        assert_eq!(&*t.route("api", "/api/posts"), UNMATCHED);
        assert_eq!(&*t.route("web", "/"), UNMATCHED);
        assert_eq!(t.services(), 0);
    }

    #[test]
    fn hostile_paths_stay_bounded_and_clean() {
        let mut t = table(&[("api", &["/admin/{x}"])]);
        // Very long: many segments, one huge segment.
        let long = "/seg".repeat(200_000);
        assert_eq!(
            &*t.route("svc", &long),
            "/seg/seg/seg/seg/seg/seg/seg/seg/*"
        );
        let huge = format!("/{}", "x".repeat(1 << 20));
        assert_eq!(&*t.route("svc", &huge), "/{token}");
        // Dot segments are resolved, never above the root.
        assert_eq!(&*t.route("svc", "/a/./b/../c"), "/a/c");
        assert_eq!(&*t.route("svc", "/../../etc/passwd"), "/etc/passwd");
        assert_eq!(&*t.route("api", "/public/../admin/users"), "/admin/{x}");
        assert_eq!(&*t.route("svc", "/.."), "/");
        // `..` after more than the stored segments still pops the right one.
        let deep = format!("{}{}/tail", "/d".repeat(40), "/..".repeat(39));
        assert_eq!(&*t.route("svc", &deep), "/d/tail");
        assert_eq!(&*t.route("svc", "//a///b//"), "/a/b");
        // Percent-encoding, replacement characters from invalid UTF-8, controls, quotes.
        assert_eq!(&*t.route("svc", "/a/%2e%2e/%2f"), "/a/{value}/{value}");
        assert_eq!(&*t.route("svc", "/a/\u{FFFD}\u{FFFD}"), "/a/{value}");
        assert_eq!(&*t.route("svc", "/a/x\r\ny"), "/a/{value}");
        assert_eq!(&*t.route("svc", "/a/\"}{"), "/a/{value}");
        assert_eq!(&*t.route("svc", "/a/{id}"), "/a/{value}");
        // Query strings, fragments and absolute-form targets never reach a label.
        assert_eq!(&*t.route("svc", "/login?token=secret&user=1"), "/login");
        assert_eq!(&*t.route("svc", "/page#frag"), "/page");
        assert_eq!(&*t.route("svc", "http://evil.example/api/1?x"), "/api/{id}");
        assert_eq!(&*t.route("svc", "http://evil.example"), "/");
        for route in t.services.values().flatten() {
            assert!(
                route.len() <= 1 + MAX_AUTO_SEGMENTS * (TOKEN_LEN + 1) + 2,
                "{route}"
            );
            assert!(
                route.bytes().all(|b| b.is_ascii_graphic()),
                "label needs escaping: {route:?}"
            );
        }
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
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn string(&mut self, alphabet: &[u8], len: usize) -> String {
            (0..len)
                .map(|_| char::from(alphabet[self.below(alphabet.len() as u64) as usize]))
                .collect()
        }
    }

    #[test]
    fn random_ids_in_fixed_shapes_give_few_routes() {
        const HEX: &[u8] = b"0123456789abcdef";
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut t = table(&[]);
        let mut routes = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = rng.below(u64::MAX);
            let uuid = {
                let h = rng.string(HEX, 32);
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            };
            // At least one digit and one letter, so never a plain number.
            let hex = format!("{}a{}", rng.string(HEX, 8), rng.below(10));
            let token_len = 40 + rng.below(20) as usize;
            let token = rng.string(ALNUM, token_len);
            let short_token = format!("{}Z9", rng.string(ALNUM, 18));
            let email = format!("{}@example.com", rng.string(ALNUM, 6));
            let path = match rng.below(8) {
                0 => format!("/api/posts/{id}"),
                1 => format!("/api/users/{uuid}/posts/{id}"),
                2 => format!("/blobs/{hex}"),
                3 => format!("/sessions/{token}/refresh"),
                4 => format!("/invites/{short_token}"),
                5 => format!("/users/{email}/settings?x={id}"),
                6 => format!("/a/b/c/d/e/f/g/h/{id}/{uuid}"),
                _ => format!("/api/communities/{id}/boards/{id}/posts/{id}/"),
            };
            routes.insert(t.route("svc", &path));
        }
        assert!(routes.len() <= 8, "{routes:?}");
        assert_eq!(t.overflowed(), 0);
    }

    #[test]
    fn config_parses_and_validates_with_named_keys() {
        let cfg: RoutesConfig = toml::from_str(
            r#"
            max_routes_per_service = 50
            [[services]]
            service = "api"
            templates = ["/api/posts/{id}", "/static/*"]
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.max_routes_per_service, 50);
        assert!(cfg.auto);
        cfg.validate().unwrap_or_else(|e| panic!("{e}"));
        RoutesConfig::default()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(toml::from_str::<RoutesConfig>("autoo = true").is_err());

        let bad = |services: Vec<(&str, Vec<&str>)>, max: usize| RoutesConfig {
            services: services
                .into_iter()
                .map(|(s, t)| ServiceRoutes {
                    service: s.to_owned(),
                    templates: t.into_iter().map(str::to_owned).collect(),
                })
                .collect(),
            max_routes_per_service: max,
            auto: true,
        };
        let cases = [
            (bad(vec![], 0), "http.routes.max_routes_per_service:"),
            (
                bad(vec![("", vec![])], 10),
                "http.routes.services[0].service:",
            ),
            (
                bad(vec![("a", vec![]), ("a", vec![])], 10),
                "http.routes.services[1].service:",
            ),
            (
                bad(vec![("a", vec!["/ok", "/x", "no-slash"])], 10),
                "http.routes.services[0].templates[2]:",
            ),
            (
                bad(vec![("a", vec!["/a/*/b"])], 10),
                "http.routes.services[0].templates[0]:",
            ),
            (
                bad(vec![("a", vec!["/a//b"])], 10),
                "http.routes.services[0].templates[0]:",
            ),
            (
                bad(vec![("a", vec!["/a/{}"])], 10),
                "http.routes.services[0].templates[0]:",
            ),
            (
                bad(vec![("a", vec!["/a/x{id}"])], 10),
                "http.routes.services[0].templates[0]:",
            ),
            (
                bad(vec![("a", vec!["/a/../b"])], 10),
                "http.routes.services[0].templates[0]:",
            ),
            (
                bad(vec![("a", vec!["/a b"])], 10),
                "http.routes.services[0].templates[0]:",
            ),
            (
                bad(vec![("a", vec!["/x", "/x"])], 10),
                "http.routes.services[0].templates[1]:",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().expect_err(key);
            assert!(err.starts_with(key), "{err:?} should name {key}");
            assert_eq!(RouteTable::new(&cfg).expect_err(key), err);
        }
    }
}
