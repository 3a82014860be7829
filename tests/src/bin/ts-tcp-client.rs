//! TCP client with exactly known traffic, and the benchmark's connect/accept/close loop; see
//! `tenantscope_tests::tcp_load`. Its file name is its `comm`, which the agent reports.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    tenantscope_tests::tcp_load::client_main(&args);
}
