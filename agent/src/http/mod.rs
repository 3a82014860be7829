//! HTTP/1.x: parsing of captured heads, request/response pairing, routes and tenants.
//! Pure and synchronous; the kernel capture lives in `probes::http`.

pub mod pairing;
pub mod parse;
pub mod route;
pub mod tenant;
pub mod trace;
