//! W3C trace context (`http::trace`, `spans::trace_state`), tenant attribution (`http::tenant`)
//! and route templating (`http::route`) with arbitrary header values, hosts and paths, under
//! several tenant chains and route tables. The header values also go through the HTTP parser
//! in a request head, which must hand the trace context over unchanged.
//!
//! Input: `tenantscope_fuzz::request_fields` text.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tenantscope_agent::http::parse::{HeaderSelection, MAX_VALUE_LEN, parse_requests};
use tenantscope_agent::http::route::{self, RouteTable, RoutesConfig, ServiceRoutes};
use tenantscope_agent::http::tenant::{
    self, RequestView, TenantConfig, TenantResolver, TenantSource,
};
use tenantscope_agent::http::trace;
use tenantscope_agent::spans;
use tenantscope_fuzz::request_fields::{self, Fields};

const TEMPLATES: [&str; 5] = [
    "/api/v1/items/{id}",
    "/api/v1/items/{id}/reviews",
    "/api/v1/items/me",
    "/static/*",
    "/",
];

fn tenant_config(which: u8) -> TenantConfig {
    let mut cfg = TenantConfig::default();
    match which % 5 {
        // The defaults: header, host subdomain (no domains: inactive), baggage.
        0 => {}
        1 => {
            cfg.sources = vec![
                TenantSource::Header {
                    name: "X-Org".into(),
                },
                TenantSource::HostSubdomain {
                    domains: vec!["platform.example".into(), "eu.platform.example.".into()],
                    ignore: vec!["www".into(), "api".into()],
                },
                TenantSource::PathPrefix {
                    pattern: "/t/{tenant}/".into(),
                },
                TenantSource::Baggage {
                    key: "tenant.id".into(),
                },
            ];
        }
        2 => {
            cfg.sources = vec![
                TenantSource::PathPrefix {
                    pattern: "/api/{version}/tenants/{tenant}".into(),
                },
                TenantSource::Baggage { key: "org".into() },
                TenantSource::Header {
                    name: "X-Tenant-ID".into(),
                },
            ];
            cfg.allowlist = vec!["acme".into(), "Globex".into(), "initech".into()];
            cfg.max_len = 16;
        }
        // Tight bounds: the second distinct tenant is folded.
        3 => {
            cfg.max_tenants = 1;
            cfg.max_len = 1;
        }
        _ => {
            cfg.sources = vec![
                TenantSource::PodLabel {
                    name: "platform.example/tenant".into(),
                },
                TenantSource::Namespace,
                TenantSource::Header {
                    name: "X-Tenant-ID".into(),
                },
            ];
        }
    }
    cfg
}

fn routes_config(which: u8) -> RoutesConfig {
    let mut cfg = RoutesConfig::default();
    if !which.is_multiple_of(3) {
        cfg.services = vec![ServiceRoutes {
            service: "shop".into(),
            templates: TEMPLATES.map(String::from).to_vec(),
        }];
        cfg.max_routes_per_service = 2;
    }
    cfg.auto = which % 3 != 2;
    cfg
}

/// A tenant id the resolver may return: one of its sentinels, or a valid, normalised id.
fn check_tenant(label: &str, source: &str, cfg: &TenantConfig) {
    if source == "none" {
        assert!(
            label == tenant::UNKNOWN || label == tenant::INVALID,
            "{label:?}"
        );
        return;
    }
    if label == tenant::OTHER {
        return;
    }
    let b = label.as_bytes();
    let valid = (1..=cfg.max_len).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c));
    assert!(valid, "tenant {label:?} from {source}");
    assert!(label != tenant::UNKNOWN && label != tenant::INVALID);
    if !cfg.allowlist.is_empty() {
        assert!(
            cfg.allowlist.iter().any(|a| a.eq_ignore_ascii_case(label)),
            "{label:?} is not allowlisted"
        );
    }
}

fn check_route(r: &str, cfg: &RoutesConfig) {
    if r == route::OTHER || r == route::UNMATCHED || TEMPLATES.contains(&r) {
        return;
    }
    assert!(cfg.auto, "automatic route {r:?} with auto off");
    // Placeholders and short unreserved literals only: a bounded, label-safe value.
    assert!(r.starts_with('/') && r.len() <= 2 + 9 * 33, "{r:?}");
    assert!(
        r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/{}*".contains(&b)),
        "{r:?}"
    );
}

fn check_traceparent(tp: &str, tracestate: Option<&str>) {
    let Some(i) = trace::incoming(Some(tp), tracestate) else {
        return;
    };
    // A traceparent that parses gives back its own ids (lowercase hex) and flags.
    assert_eq!(
        tp.get(3..35),
        Some(trace::hex(&i.trace_id).as_str()),
        "{tp:?}"
    );
    assert_eq!(
        tp.get(36..52),
        Some(trace::hex(&i.parent_span_id).as_str()),
        "{tp:?}"
    );
    assert_ne!(i.trace_id, [0; 16]);
    assert_ne!(i.parent_span_id, [0; 8]);
    assert_ne!(tp.get(..2), Some("ff"));
    let flags = tp.get(53..55).and_then(|f| u8::from_str_radix(f, 16).ok());
    assert_eq!(flags.map(|f| f & 1 == 1), Some(i.sampled), "{tp:?}");
    let _ = spans::trace_state(tracestate);
}

/// The head a client would send with these values (absent ones left out), if they fit on a
/// request or header line.
fn request_bytes(f: &Fields<'_>) -> Option<Vec<u8>> {
    let line_safe = |v: &str| !v.contains(['\r', '\n']);
    if !f.path.starts_with('/') || f.path.contains(' ') || !line_safe(f.path) {
        return None;
    }
    let mut text = format!("GET {} HTTP/1.1\r\n", f.path);
    for (name, value) in [
        ("traceparent", f.traceparent),
        ("Host", f.host),
        ("tracestate", f.tracestate),
        ("baggage", f.baggage),
        ("X-Tenant-ID", f.tenant_header),
    ] {
        let Some(v) = value else { continue };
        if !line_safe(v) {
            return None;
        }
        text.push_str(&format!("{name}: {v}\r\n"));
    }
    text.push_str("\r\n");
    Some(text.into_bytes())
}

/// Whether the parser must keep this value as it is: printable ASCII, no surrounding
/// whitespace (which it trims), not too long.
fn clean(v: &str) -> bool {
    !v.is_empty()
        && v == v.trim_matches([' ', '\t'])
        && v.len() <= MAX_VALUE_LEN
        && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let f = request_fields::read(&text);

    if let Some(tp) = f.traceparent {
        check_traceparent(tp, f.tracestate);
    }
    // The same values through the parser: a clean traceparent is handed over unchanged (and so
    // parses to the same trace).
    if let Some(bytes) = request_bytes(&f)
        && let Ok(heads) = parse_requests(&bytes, &HeaderSelection::default())
        && let Some(tp) = f.traceparent.filter(|tp| clean(tp))
        && heads.len() == 1
        && heads[0].complete
    {
        assert_eq!(heads[0].traceparent.as_deref(), Some(tp), "{:?}", heads[0]);
    }

    let tenant_cfg = tenant_config(f.config);
    let mut resolver = TenantResolver::new(&tenant_cfg).expect("the fixed configs are valid");
    let labels = BTreeMap::from([(
        "platform.example/tenant".to_owned(),
        f.tenant_header.unwrap_or("").to_owned(),
    )]);
    let view = RequestView {
        tenant_header: f.tenant_header,
        host: f.host,
        path: f.path,
        baggage: f.baggage,
        pod_labels: Some(&labels),
        namespace: f.host,
    };
    let (first, source) = resolver.resolve(&view);
    check_tenant(&first, source, &tenant_cfg);
    // Resolving again gives the same tenant (an admitted tenant keeps its label).
    let (again, again_source) = resolver.resolve(&view);
    assert_eq!((&*again, again_source), (&*first, source));
    // Other requests, whose values swap places.
    for other in [
        RequestView {
            tenant_header: f.host,
            host: f.tenant_header,
            path: f.service,
            baggage: f.tracestate,
            ..view
        },
        RequestView {
            tenant_header: f.baggage,
            path: f.tenant_header.unwrap_or(""),
            pod_labels: None,
            namespace: None,
            ..view
        },
    ] {
        let (label, source) = resolver.resolve(&other);
        check_tenant(&label, source, &tenant_cfg);
    }
    let stats = resolver.stats();
    assert!(stats.distinct_tenants <= tenant_cfg.max_tenants);

    let routes_cfg = routes_config(f.config / 5);
    let mut routes = RouteTable::new(&routes_cfg).expect("the fixed configs are valid");
    for (service, path) in [
        (f.service, f.path),
        ("shop", f.path),
        ("shop", f.service),
        (f.service, f.host.unwrap_or("")),
    ] {
        let r = routes.route(service, path);
        check_route(&r, &routes_cfg);
        assert_eq!(
            routes.route(service, path),
            r,
            "the same path, another route"
        );
        assert!(routes.routes_of(service) <= routes_cfg.max_routes_per_service);
    }
    assert!(routes.services() <= route::MAX_SERVICES);
});
