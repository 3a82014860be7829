//! `process` probe: fork/exec/exit events from tracepoints over a ring buffer.

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tenantscope_agent_common::process::{
    EXEC_KIND, EXIT_KIND, FORK_KIND, NEWTASK_CLONE_FLAGS_OFFSET, NEWTASK_PID_OFFSET, ProcessEvent,
};

use super::{ProbeError, format_field_offset, take_map, tracefs};
use crate::workload::comm_from_bytes;

pub const NAME: &str = "process";

/// A decoded process event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Fork {
        child: u32,
        parent: u32,
    },
    /// `cgroup_id` is the cgroup v2 id of the process (the root cgroup's on v1-only hosts).
    Exec {
        tgid: u32,
        comm: String,
        cgroup_id: u64,
    },
    Exit {
        tgid: u32,
    },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Fork { .. } => "fork",
            Self::Exec { .. } => "exec",
            Self::Exit { .. } => "exit",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
}

/// Decodes one ring-buffer record. Pure; never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let ev: ProcessEvent = super::plain_record(bytes)
        .map_err(|(got, expected)| DecodeError::Size { got, expected })?;
    match ev.header.kind {
        FORK_KIND => Ok(Event::Fork {
            child: ev.tgid,
            parent: ev.ppid,
        }),
        EXEC_KIND => Ok(Event::Exec {
            tgid: ev.tgid,
            comm: comm_from_bytes(&ev.comm),
            cgroup_id: ev.cgroup_id,
        }),
        EXIT_KIND => Ok(Event::Exit { tgid: ev.tgid }),
        k => Err(DecodeError::Kind(k)),
    }
}

pub struct ProcessProbe {
    pub events: RingBuf<MapData>,
}

const PROGRAMS: [(&str, &str, &str); 3] = [
    ("process_exit", "sched", "sched_process_exit"),
    ("process_fork", "task", "task_newtask"),
    ("process_exec", "sched", "sched_process_exec"),
];

pub fn attach(ebpf: &mut Ebpf) -> Result<ProcessProbe, ProbeError> {
    let tracefs = tracefs()?;
    check_newtask_layout(&tracefs)?;
    let mut attached = Vec::new();
    for (program, category, name) in PROGRAMS {
        if let Err(e) = super::attach_tracepoint(ebpf, program, category, name) {
            for p in attached {
                if let Some(aya::programs::Program::TracePoint(p)) = ebpf.program_mut(p) {
                    let _ = p.unload();
                }
            }
            return Err(e);
        }
        attached.push(program);
    }
    Ok(ProcessProbe {
        events: take_map(ebpf, "PROCESS_EVENTS")?,
    })
}

/// The kernel program reads `task_newtask` fields at fixed offsets; refuse to attach if this
/// kernel lays the record out differently rather than report garbage.
fn check_newtask_layout(tracefs: &std::path::Path) -> Result<(), ProbeError> {
    let path = tracefs.join("events/task/task_newtask/format");
    let format = std::fs::read_to_string(&path).map_err(|e| ProbeError::Layout {
        tracepoint: "task:task_newtask",
        detail: format!("cannot read {}: {e}", path.display()),
    })?;
    check_offsets(&format)
}

fn check_offsets(format: &str) -> Result<(), ProbeError> {
    for (field, want) in [
        ("pid", NEWTASK_PID_OFFSET),
        ("clone_flags", NEWTASK_CLONE_FLAGS_OFFSET),
    ] {
        let got = format_field_offset(format, field);
        if got != Some(want) {
            return Err(ProbeError::Layout {
                tracepoint: "task:task_newtask",
                detail: format!("field {field} at offset {got:?}, the program expects {want}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tenantscope_agent_common::EventHeader;

    use super::*;

    fn raw(kind: u32, tgid: u32, ppid: u32, comm: &[u8]) -> Vec<u8> {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        let ev = ProcessEvent {
            header: EventHeader {
                kind,
                _pad: 0,
                ts_ns: 42,
            },
            tgid,
            ppid,
            cgroup_id: 1,
            comm: c,
        };
        // SAFETY: plain data viewed as bytes.
        unsafe {
            std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<ProcessEvent>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_each_kind() {
        assert_eq!(
            decode(&raw(FORK_KIND, 11, 10, b"bash")),
            Ok(Event::Fork {
                child: 11,
                parent: 10
            })
        );
        assert_eq!(
            decode(&raw(EXEC_KIND, 11, 0, b"ts-syscall-load")),
            Ok(Event::Exec {
                tgid: 11,
                comm: "ts-syscall-load".into(),
                cgroup_id: 1
            })
        );
        assert_eq!(
            decode(&raw(EXIT_KIND, 11, 0, b"")),
            Ok(Event::Exit { tgid: 11 })
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode(&raw(99, 1, 0, b"")), Err(DecodeError::Kind(99)));
        assert!(matches!(
            decode(&[0u8; 3]),
            Err(DecodeError::Size { got: 3, .. })
        ));
        assert!(matches!(decode(&[]), Err(DecodeError::Size { got: 0, .. })));
        let mut long = raw(EXEC_KIND, 1, 0, b"x");
        long.push(0);
        assert!(decode(&long).is_err());
    }

    #[test]
    fn layout_check() {
        let ok = "\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n";
        assert!(check_offsets(ok).is_ok());
        let moved = ok.replace("offset:32", "offset:40");
        let err = check_offsets(&moved).unwrap_err().to_string();
        assert!(err.contains("clone_flags") && err.contains("40"), "{err}");
    }
}
