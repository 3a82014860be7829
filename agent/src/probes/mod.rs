//! Kernel I/O: load the embedded eBPF object, attach each probe, hand out its maps.
//!
//! A probe that fails to attach is reported (logs and `tenantscope_agent_probe_status`) and the
//! others keep working. Dropping [`Loaded`] detaches every link and closes every map and program
//! fd; nothing is pinned, so the kernel frees them all.

pub mod btf;
pub mod http;
pub mod process;
pub mod syscalls;
pub mod tcp;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader, maps::PerCpuArray, programs::ProgramError};
use tenantscope_agent_common::counters;

/// The kernel programs, built by `build.rs` from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tenantscope"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "not privileged: loading eBPF programs needs root or the capabilities CAP_BPF and \
         CAP_PERFMON (effective capabilities here: {effective:#x}); run as root, or grant them \
         (e.g. `setcap cap_bpf,cap_perfmon,cap_dac_read_search,cap_sys_ptrace+ep tenantscope-agent`)"
    )]
    NotPrivileged { effective: u64 },
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error(
        "tracefs is not mounted (looked for {}/events and /sys/kernel/debug/tracing/events); \
         mount it with `mount -t tracefs tracefs /sys/kernel/tracing` or run `cargo xtask setup`",
        .0.display()
    )]
    NoTracefs(PathBuf),
    #[error("program {0} is missing from the eBPF object (build mismatch)")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object (build mismatch)")]
    MissingMap(&'static str),
    #[error("loading program {program} failed: {source}")]
    ProgramLoad {
        program: &'static str,
        source: ProgramError,
    },
    #[error("attaching {program} to {target} failed: {source}")]
    Attach {
        program: &'static str,
        target: String,
        source: ProgramError,
    },
    #[error("tracepoint {tracepoint} has an unexpected layout: {detail}")]
    Layout {
        tracepoint: &'static str,
        detail: String,
    },
    #[error("kernel BTF (/sys/kernel/btf/vmlinux, needs CONFIG_DEBUG_INFO_BTF): {0}")]
    Btf(String),
    #[error("the shared sys_enter/sys_exit programs failed to attach: {0}")]
    SharedHooks(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot poll the ring buffer: {0}")]
    Poll(#[source] std::io::Error),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// Where a probe stands; exported as `tenantscope_agent_probe_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeState {
    Attached,
    Failed(String),
    Disabled,
}

impl ProbeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Failed(_) => "failed",
            Self::Disabled => "disabled",
        }
    }
}

/// Settings that must be fixed before the object is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub agent_tgid: u32,
    pub syscall_stats_entries: u32,
    pub process_ringbuf_bytes: u32,
    /// Socket field offsets for the `tcp` probe; `None` leaves its programs inert.
    pub tcp_offsets: Option<tenantscope_agent_common::tcp::TcpOffsets>,
    pub tcp_connections: u32,
    pub tcp_stats_entries: u32,
    pub tcp_ringbuf_bytes: u32,
    /// Syscall numbers, register offsets and windows for the `http` probe; `None` leaves its
    /// programs inert.
    pub http_config: Option<tenantscope_agent_common::http::HttpConfig>,
    pub http_ringbuf_bytes: u32,
    /// Probes served by the shared `sys_enter`/`sys_exit` programs: bit 0 syscalls, bit 1 http.
    pub syscall_hooks: u32,
}

/// The loaded object and the failure counters shared by all probes.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub counters: PerCpuArray<aya::maps::MapData, u64>,
}

/// Checks privileges, then loads (but does not attach) every program's object and map.
pub fn load(opts: &LoadOptions) -> Result<Loaded, ProbeError> {
    check_privileges()?;
    raise_memlock();
    let tcp_offsets = opts.tcp_offsets.unwrap_or_default();
    let mut ebpf = EbpfLoader::new()
        .override_global("AGENT_TGID", &opts.agent_tgid, true)
        .override_global("TCP_OFFSETS", &tcp_offsets, true)
        .override_global("HTTP_CONFIG", &opts.http_config.unwrap_or_default(), true)
        .override_global("SYSCALL_HOOKS", &opts.syscall_hooks, true)
        .map_max_entries("HTTP_EVENTS", opts.http_ringbuf_bytes)
        .map_max_entries("SYSCALL_STATS", opts.syscall_stats_entries)
        .map_max_entries("PROCESS_EVENTS", opts.process_ringbuf_bytes)
        .map_max_entries("TCP_ENDPOINTS", opts.tcp_connections)
        .map_max_entries("TCP_STATS", opts.tcp_stats_entries)
        .map_max_entries("TCP_EVENTS", opts.tcp_ringbuf_bytes)
        .load(EBPF_OBJECT)
        .map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                ProbeError::NotPrivileged {
                    effective: effective_caps(),
                }
            }
            _ => ProbeError::Load(Box::new(e)),
        })?;
    let counters = take_map(&mut ebpf, "KERNEL_COUNTERS")?;
    Ok(Loaded { ebpf, counters })
}

impl Loaded {
    /// Sums the per-CPU failure counters; a failed read leaves that slot at its last value.
    pub fn read_counters(
        &self,
        into: &mut [u64; counters::COUNT as usize],
    ) -> Result<(), ProbeError> {
        for (i, slot) in into.iter_mut().enumerate() {
            let values = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|source| ProbeError::Map {
                    map: "KERNEL_COUNTERS",
                    source,
                })?;
            *slot = values.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Ok(())
    }
}

pub(crate) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { map: name, source })
}

/// A fixed-size ring-buffer record as `T`, or `Err((got, expected))` when the length differs.
pub(crate) fn plain_record<T: aya::Pod>(bytes: &[u8]) -> Result<T, (usize, usize)> {
    let expected = size_of::<T>();
    if bytes.len() != expected {
        return Err((bytes.len(), expected));
    }
    // SAFETY: length checked; `T` is plain data (`Pod`), read unaligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Reads every entry of a kernel hash map into `out` (cleared first); returns how many reads
/// failed. Entries deleted while iterating are not failures.
pub(crate) fn read_all<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &str,
    out: &mut Vec<(K, V)>,
) -> u64 {
    out.clear();
    let mut errors = 0;
    for item in map.iter() {
        match item {
            Ok(kv) => out.push(kv),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => {
                errors += 1;
                tracing::debug!(error = %e, map = name, "reading a kernel map");
            }
        }
    }
    errors
}

/// Deletes a key from a kernel hash map; a key already gone is not an error.
pub(crate) fn remove_key<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<(), ProbeError> {
    match map.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(ProbeError::Map { map: name, source }),
    }
}

/// Loads `program` and attaches it to the classic tracepoint `category:name`.
pub(crate) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    name: &str,
) -> Result<(), ProbeError> {
    let p: &mut aya::programs::TracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?
        .try_into()
        .map_err(|source| ProbeError::ProgramLoad { program, source })?;
    p.load()
        .map_err(|source| ProbeError::ProgramLoad { program, source })?;
    p.attach(category, name)
        .map_err(|source| ProbeError::Attach {
            program,
            target: format!("tracepoint/{category}/{name}"),
            source,
        })?;
    Ok(())
}

/// Loads `program` and attaches it to the BTF-typed tracepoint `tp`.
pub(crate) fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    program: &'static str,
    tp: &str,
) -> Result<(), ProbeError> {
    let p: &mut aya::programs::BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?
        .try_into()
        .map_err(|source| ProbeError::ProgramLoad { program, source })?;
    p.load(tp, btf)
        .map_err(|source| ProbeError::ProgramLoad { program, source })?;
    p.attach().map_err(|source| ProbeError::Attach {
        program,
        target: format!("tp_btf/{tp}"),
        source,
    })?;
    Ok(())
}

/// The tracefs mount, as aya looks for it.
pub fn tracefs() -> Result<PathBuf, ProbeError> {
    let primary = Path::new("/sys/kernel/tracing");
    for p in [primary, Path::new("/sys/kernel/debug/tracing")] {
        if p.join("events").is_dir() {
            return Ok(p.to_owned());
        }
    }
    Err(ProbeError::NoTracefs(primary.to_owned()))
}

/// Offset of `field` in a tracefs `format` file (`field:<type> <name>;\toffset:N;...`).
pub fn format_field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let off = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.parse().ok()
    })
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn check_privileges() -> Result<(), ProbeError> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(ProbeError::NotPrivileged { effective: caps })
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use the memory cgroup.
/// Raising it needs CAP_SYS_RESOURCE, which a least-privilege agent may not hold: not fatal.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `task:task_newtask` format as printed by tracefs on Linux 6.18.
    const NEWTASK: &str = "name: task_newtask\nID: 205\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n\tfield:short oom_score_adj;\toffset:40;\tsize:2;\tsigned:1;\n";

    #[test]
    fn parses_tracefs_format_offsets() {
        assert_eq!(format_field_offset(NEWTASK, "pid"), Some(8));
        assert_eq!(format_field_offset(NEWTASK, "comm"), Some(12));
        assert_eq!(format_field_offset(NEWTASK, "clone_flags"), Some(32));
        assert_eq!(format_field_offset(NEWTASK, "common_pid"), Some(4));
        assert_eq!(format_field_offset(NEWTASK, "missing"), None);
        assert_eq!(format_field_offset("garbage\nfield:;;offset:x;", "x"), None);
    }

    #[test]
    fn probe_state_names_match_exported_states() {
        for s in [
            ProbeState::Attached,
            ProbeState::Failed("x".into()),
            ProbeState::Disabled,
        ] {
            assert!(crate::telemetry::PROBE_STATES.contains(&s.as_str()));
        }
    }
}
