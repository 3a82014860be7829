//! Thin I/O shell over `/proc`: reads what [`super::Workload::from_proc`] needs.

use std::{
    fs,
    path::{Path, PathBuf},
};

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

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (field 5 is the mount point; the
/// filesystem type follows the ` - ` separator).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Resolves a cgroup v2 id (what `bpf_get_current_cgroup_id()` returns) to its path relative to
/// the cgroup2 mount, e.g. `/kubepods.slice/.../cri-containerd-<id>.scope`. Works after the
/// process has exited, as long as the cgroup exists. Needs CAP_DAC_READ_SEARCH.
pub fn cgroup_v2_path(mount: &Path, id: u64) -> Option<String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    /// `struct file_handle` with room for the 8-byte kernfs node id.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    /// `FILEID_KERNFS` from `include/linux/exportfs.h`: cgroup ids are kernfs node ids.
    const FILEID_KERNFS: i32 = 0xfe;

    let dir = fs::File::open(mount).ok()?;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `handle` is a valid file_handle header followed by `handle_bytes` bytes.
    let fd = unsafe {
        libc::open_by_handle_at(
            dir.as_raw_fd(),
            (&raw mut handle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let full = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let rel = full.strip_prefix(mount).ok()?;
    Some(format!("/{}", rel.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        // Lines from this machine's /proc/self/mountinfo (a cgroup v1/v2 hybrid host).
        let hybrid = "35 25 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      36 35 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
                      45 35 0:40 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(v2), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
    }
}
