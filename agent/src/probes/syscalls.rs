//! `syscalls` probe: attaches the enter/exit hooks and reads `SYSCALL_STATS`.

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use tenantscope_agent_common::syscalls::{SyscallKey, SyscallStats};

use super::{ProbeError, take_map};
use crate::config::SyscallHook;

pub const NAME: &str = "syscalls";

/// The attached probe and its aggregation map.
pub struct SyscallsProbe {
    stats: HashMap<MapData, SyscallKey, SyscallStats>,
}

/// Attaches the probe. With the (default) raw-tracepoint hook the programs are the shared
/// `sys_enter`/`sys_exit` pair, attached once for every probe by [`attach_shared_hooks`]:
/// `shared` is its outcome. The classic-tracepoint hook has programs of its own.
pub fn attach(
    ebpf: &mut Ebpf,
    hook: SyscallHook,
    shared: &Result<(), String>,
) -> Result<SyscallsProbe, ProbeError> {
    match hook {
        SyscallHook::RawTracepoint => shared.clone().map_err(ProbeError::SharedHooks)?,
        SyscallHook::Tracepoint => {
            super::tracefs()?;
            // Exit before enter: an exit without its entry is only counted as unpaired, while
            // an entry without its exit would fill `SYSCALL_START` for nothing.
            attach_tp(ebpf, "syscalls_exit_tp", "sys_exit")?;
            if let Err(e) = attach_tp(ebpf, "syscalls_enter_tp", "sys_enter") {
                if let Some(aya::programs::Program::TracePoint(p)) =
                    ebpf.program_mut("syscalls_exit_tp")
                {
                    let _ = p.unload();
                }
                return Err(e);
            }
        }
    }
    Ok(SyscallsProbe {
        stats: take_map(ebpf, "SYSCALL_STATS")?,
    })
}

/// Attaches the `sys_enter`/`sys_exit` programs shared by the `syscalls` (raw-tracepoint hook)
/// and `http` probes; which probes they serve was fixed at load (`SYSCALL_HOOKS`). Exit first,
/// for the reason given in [`attach`].
pub fn attach_shared_hooks(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
    super::attach_btf_tracepoint(ebpf, &btf, "sys_exit", "sys_exit")?;
    if let Err(e) = super::attach_btf_tracepoint(ebpf, &btf, "sys_enter", "sys_enter") {
        if let Some(aya::programs::Program::BtfTracePoint(p)) = ebpf.program_mut("sys_exit") {
            let _ = p.unload();
        }
        return Err(e);
    }
    Ok(())
}

fn attach_tp(ebpf: &mut Ebpf, program: &'static str, name: &str) -> Result<(), ProbeError> {
    super::attach_tracepoint(ebpf, program, "raw_syscalls", name)
}

impl SyscallsProbe {
    /// Reads every entry into `out` (cleared first). Returns how many entries failed to read;
    /// entries deleted concurrently are not errors.
    pub fn read(&self, out: &mut Vec<(SyscallKey, SyscallStats)>) -> u64 {
        super::read_all(&self.stats, "SYSCALL_STATS", out)
    }

    /// Deletes the entries of exited processes after their final counts were folded.
    pub fn remove(&mut self, key: &SyscallKey) -> Result<(), ProbeError> {
        super::remove_key(&mut self.stats, "SYSCALL_STATS", key)
    }
}
