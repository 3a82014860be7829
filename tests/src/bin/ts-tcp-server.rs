//! TCP server with exactly known traffic; see `tenantscope_tests::tcp_load` for the protocol.
//! Its file name is its `comm`, which the agent reports as the workload.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    tenantscope_tests::tcp_load::server_main(&args);
}
