#![no_std]
// The kernel programs live in the `tenantscope` binary target (src/main.rs), built for bpf only.
