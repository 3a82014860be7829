fn main() { let o = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tenantscope")); println!("{}", o.len()); }
