//! Makes a known number of distinctive syscalls, then exits.
//!
//! `ts-syscall-load [--getppid N] [--nanosleep N] [--sleep-ms MS] [--close-errors N] [--fork]`
//! With `--fork`, a forked child (no exec) makes the same calls before the parent does.
//! `--time N` (benchmarks) instead runs N getppid calls `--rounds` times (default 7), pinned to
//! CPU `--cpu` (default 1), and prints the fastest round's nanoseconds per call.

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v}"))
        })
        .unwrap_or(default)
}

fn work(getppid: u64, nanosleep: u64, sleep_ms: u64, close_errors: u64) {
    for _ in 0..getppid {
        // SAFETY: no arguments; the raw syscall avoids any libc caching.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: (sleep_ms * 1_000_000) as libc::c_long,
    };
    for _ in 0..nanosleep {
        // SAFETY: valid timespec pointer; NULL remainder is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &ts,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
    }
    for _ in 0..close_errors {
        // SAFETY: closing an invalid fd only returns EBADF.
        unsafe { libc::syscall(libc::SYS_close, -1) };
    }
}

/// Minimum over `rounds` of the mean cost of one getppid, in ns: the minimum filters out
/// preemption and other noise of a shared machine.
fn time_getppid(calls: u64, rounds: u64, cpu: usize) -> f64 {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
    (0..rounds)
        .map(|_| {
            let t0 = std::time::Instant::now();
            work(calls, 0, 0, 0);
            t0.elapsed().as_nanos() as f64 / calls as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let time = arg(&args, "--time", 0);
    if time > 0 {
        let ns = time_getppid(
            time,
            arg(&args, "--rounds", 7),
            arg(&args, "--cpu", 1) as usize,
        );
        println!("{ns:.1}");
        return;
    }
    let (g, n, ms, c) = (
        arg(&args, "--getppid", 0),
        arg(&args, "--nanosleep", 0),
        arg(&args, "--sleep-ms", 10),
        arg(&args, "--close-errors", 0),
    );
    if args.iter().any(|a| a == "--fork") {
        // SAFETY: single-threaded here; the child only makes raw syscalls and _exits.
        match unsafe { libc::fork() } {
            0 => {
                work(g, n, ms, c);
                unsafe { libc::_exit(0) };
            }
            -1 => panic!("fork failed: {}", std::io::Error::last_os_error()),
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
            }
        }
    }
    work(g, n, ms, c);
}
