//! Thin I/O shell over `/proc`: reads what [`super::Workload::from_proc`] needs.

use std::{fs, path::Path};

use super::Workload;

/// Reads the workload of a live process; `None` when the process is gone.
pub fn read_workload(proc_root: &Path, tgid: u32) -> Option<Workload> {
    let dir = proc_root.join(tgid.to_string());
    let comm = fs::read_to_string(dir.join("comm")).ok()?;
    let cgroup = fs::read_to_string(dir.join("cgroup")).ok();
    Some(Workload::from_proc(
        cgroup.as_deref(),
        comm.trim_end_matches('\n'),
    ))
}

/// Whether `/proc/<tgid>` still exists.
pub fn alive(proc_root: &Path, tgid: u32) -> bool {
    proc_root.join(tgid.to_string()).exists()
}

/// tgids of all processes currently listed in `/proc`.
pub fn list_tgids(proc_root: &Path) -> std::io::Result<Vec<u32>> {
    Ok(fs::read_dir(proc_root)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}
