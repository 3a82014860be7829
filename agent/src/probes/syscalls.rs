//! `syscalls` probe: attaches the enter/exit hooks and reads `SYSCALL_STATS`.

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::RawTracePoint,
};
use tenantscope_agent_common::syscalls::{SyscallKey, SyscallStats};

use super::{ProbeError, take_map};
use crate::config::SyscallHook;

pub const NAME: &str = "syscalls";

/// The attached probe and its aggregation map.
pub struct SyscallsProbe {
    stats: HashMap<MapData, SyscallKey, SyscallStats>,
}

/// Attaches exit before enter: an exit without an entry is only counted as unpaired, while an
/// entry hook without its exit would fill `SYSCALL_START` for nothing.
pub fn attach(ebpf: &mut Ebpf, hook: SyscallHook) -> Result<SyscallsProbe, ProbeError> {
    match hook {
        SyscallHook::RawTracepoint => {
            attach_raw(ebpf, "syscalls_exit", "sys_exit")?;
            if let Err(e) = attach_raw(ebpf, "syscalls_enter", "sys_enter") {
                unload(ebpf, "syscalls_exit");
                return Err(e);
            }
        }
        SyscallHook::Tracepoint => {
            super::tracefs()?;
            attach_tp(ebpf, "syscalls_exit_tp", "sys_exit")?;
            if let Err(e) = attach_tp(ebpf, "syscalls_enter_tp", "sys_enter") {
                unload(ebpf, "syscalls_exit_tp");
                return Err(e);
            }
        }
    }
    Ok(SyscallsProbe {
        stats: take_map(ebpf, "SYSCALL_STATS")?,
    })
}

fn attach_raw(ebpf: &mut Ebpf, program: &'static str, tp: &str) -> Result<(), ProbeError> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?
        .try_into()
        .map_err(|source| ProbeError::ProgramLoad { program, source })?;
    p.load()
        .map_err(|source| ProbeError::ProgramLoad { program, source })?;
    p.attach(tp).map_err(|source| ProbeError::Attach {
        program,
        target: format!("raw_tp/{tp}"),
        source,
    })?;
    Ok(())
}

fn attach_tp(ebpf: &mut Ebpf, program: &'static str, name: &str) -> Result<(), ProbeError> {
    super::attach_tracepoint(ebpf, program, "raw_syscalls", name)
}

/// Detaches and unloads a program attached earlier, when its partner failed to attach.
fn unload(ebpf: &mut Ebpf, program: &str) {
    match ebpf.program_mut(program) {
        Some(aya::programs::Program::RawTracePoint(p)) => {
            let _ = p.unload();
        }
        Some(aya::programs::Program::TracePoint(p)) => {
            let _ = p.unload();
        }
        _ => {}
    }
}

impl SyscallsProbe {
    /// Reads every entry into `out` (cleared first). Returns how many entries failed to read;
    /// entries deleted concurrently are not errors.
    pub fn read(&self, out: &mut Vec<(SyscallKey, SyscallStats)>) -> u64 {
        out.clear();
        let mut errors = 0;
        for item in self.stats.iter() {
            match item {
                Ok(kv) => out.push(kv),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    errors += 1;
                    tracing::debug!(error = %e, "reading SYSCALL_STATS");
                }
            }
        }
        errors
    }

    /// Deletes the entries of exited processes after their final counts were folded.
    pub fn remove(&mut self, key: &SyscallKey) -> Result<(), ProbeError> {
        match self.stats.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(ProbeError::Map {
                map: "SYSCALL_STATS",
                source,
            }),
        }
    }
}
