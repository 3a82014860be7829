//! TCP workloads with exactly known traffic, for the `tcp` probe's tests and benchmark. The
//! agent names host processes by `comm`, so client and server are two binaries
//! (`ts-tcp-server`, `ts-tcp-client`) that only call [`server_main`] and [`client_main`].
//!
//! Everything is bounded: a count of connections, read/write timeouts and an overall deadline.
//! Failures print one line on stderr and exit 1; usage errors exit 2.

use std::{
    collections::BTreeMap,
    io::{self, BufRead as _, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
    time::{Duration, Instant},
};

/// Per-socket read/write timeout: a stuck peer fails the run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub const SERVER_USAGE: &str = "ts-tcp-server --listen ADDR:PORT --accept N [--recv-bytes R] \
[--send-bytes S] [--reset] [--hold-ms H] [--timeout-ms T]";

pub const CLIENT_USAGE: &str = "ts-tcp-client --connect ADDR:PORT --count N [--send-bytes S] \
[--recv-bytes R] [--expect ok|refused|timeout|reset] [--syn-retries K] [--pause-ms P] \
[--wait-stdin] [--parallel]\n       ts-tcp-client --loop N [--reps R] [--cpu C] [--private-netns]";

/// `--name value` options and `--switch` flags, checked against what the program knows.
struct Opts {
    map: BTreeMap<String, String>,
    usage: &'static str,
}

impl Opts {
    fn parse(args: &[String], valued: &[&str], switches: &[&str], usage: &'static str) -> Opts {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if switches.contains(&a.as_str()) {
                map.insert(a.clone(), String::new());
            } else if valued.contains(&a.as_str()) {
                let Some(v) = it.next() else {
                    usage_error(usage, &format!("{a} needs a value"));
                };
                map.insert(a.clone(), v.clone());
            } else {
                usage_error(usage, &format!("unknown argument {a:?}"));
            }
        }
        Opts { map, usage }
    }

    fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    fn num(&self, name: &str, default: u64) -> u64 {
        match self.str(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                usage_error(self.usage, &format!("{name} takes a number, got {v:?}"))
            }),
        }
    }

    fn addr(&self, name: &str) -> SocketAddr {
        let Some(v) = self.str(name) else {
            usage_error(self.usage, &format!("{name} is required"));
        };
        v.parse().unwrap_or_else(|_| {
            usage_error(
                self.usage,
                &format!("{name} takes ADDR:PORT ([v6]:PORT), got {v:?}"),
            )
        })
    }
}

fn usage_error(usage: &str, msg: &str) -> ! {
    eprintln!("error: {msg}\nusage: {usage}");
    std::process::exit(2)
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}

/// `ts-tcp-server`: listens, prints `READY <port>`, serves `--accept` connections one after the
/// other (read exactly R bytes, write S bytes, then close or reset), prints a JSON summary.
pub fn server_main(args: &[String]) {
    let o = Opts::parse(
        args,
        &[
            "--listen",
            "--accept",
            "--recv-bytes",
            "--send-bytes",
            "--hold-ms",
            "--timeout-ms",
        ],
        &["--reset"],
        SERVER_USAGE,
    );
    let listen = o.addr("--listen");
    let accept = o.num("--accept", 1);
    let (recv, send) = (o.num("--recv-bytes", 0), o.num("--send-bytes", 0));
    let hold = Duration::from_millis(o.num("--hold-ms", 0));
    let reset = o.has("--reset");
    let deadline = Instant::now() + Duration::from_millis(o.num("--timeout-ms", 60_000));

    // std sets SO_REUSEADDR on Unix listeners, so a test can rebind a port left in TIME_WAIT.
    let listener =
        TcpListener::bind(listen).unwrap_or_else(|e| fail(&format!("bind {listen}: {e}")));
    let port = listener.local_addr().expect("local_addr").port();
    println!("READY {port}");
    io::stdout().flush().expect("flush stdout");

    let (mut received, mut sent, mut resets) = (0u64, 0u64, 0u64);
    for i in 0..accept {
        wait_readable(&listener, deadline)
            .unwrap_or_else(|e| fail(&format!("connection {i}: {e}")));
        let (mut s, peer) = listener
            .accept()
            .unwrap_or_else(|e| fail(&format!("accept: {e}")));
        let ctx = format!("connection {i} from {peer}");
        set_timeouts(&s);
        read_exact_count(&mut s, recv).unwrap_or_else(|e| fail(&format!("{ctx}: read: {e}")));
        received += recv;
        write_count(&mut s, send).unwrap_or_else(|e| fail(&format!("{ctx}: write: {e}")));
        sent += send;
        if reset {
            std::thread::sleep(hold);
            // SO_LINGER {on, 0}: close() sends an RST instead of a FIN.
            set_linger_zero(&s).unwrap_or_else(|e| fail(&format!("{ctx}: SO_LINGER: {e}")));
            resets += 1;
        } else {
            // The client shuts its side down after writing: wait for that EOF, so the close
            // below is an orderly FIN after all data was exchanged.
            let extra = drain(&mut s).unwrap_or_else(|e| fail(&format!("{ctx}: drain: {e}")));
            if extra != 0 {
                fail(&format!(
                    "{ctx}: {extra} bytes more than --recv-bytes {recv}"
                ));
            }
            std::thread::sleep(hold);
        }
        drop(s);
    }
    println!(
        "{{\"role\":\"server\",\"listen\":\"{listen}\",\"port\":{port},\"accepted\":{accept},\
         \"received\":{received},\"sent\":{sent},\"resets\":{resets}}}"
    );
}

/// What a client connection is expected to end with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Ok,
    Refused,
    Timeout,
    Reset,
}

/// What one client connection did.
#[derive(Default)]
struct Outcome {
    sent: u64,
    received: u64,
}

/// `ts-tcp-client`: `--count` connections to `--connect`, each ending as `--expect` says, then a
/// JSON summary; or `--loop N`, the benchmark's connect/accept/close loop.
pub fn client_main(args: &[String]) {
    let o = Opts::parse(
        args,
        &[
            "--connect",
            "--count",
            "--send-bytes",
            "--recv-bytes",
            "--expect",
            "--syn-retries",
            "--pause-ms",
            "--loop",
            "--reps",
            "--cpu",
        ],
        &["--wait-stdin", "--parallel", "--private-netns"],
        CLIENT_USAGE,
    );
    if o.has("--loop") {
        return loop_main(&o);
    }
    let addr = o.addr("--connect");
    let count = o.num("--count", 1);
    let expect = match o.str("--expect").unwrap_or("ok") {
        "ok" => Expect::Ok,
        "refused" => Expect::Refused,
        "timeout" => Expect::Timeout,
        "reset" => Expect::Reset,
        other => usage_error(CLIENT_USAGE, &format!("--expect {other:?}")),
    };
    let syn_retries = o.str("--syn-retries").map(|_| o.num("--syn-retries", 0));
    let plan = Plan {
        addr,
        send: o.num("--send-bytes", 0),
        recv: o.num("--recv-bytes", 0),
        expect,
        syn_retries,
        pause: Duration::from_millis(o.num("--pause-ms", 0)),
        wait_stdin: o.has("--wait-stdin"),
    };
    if plan.wait_stdin && o.has("--parallel") {
        usage_error(CLIENT_USAGE, "--wait-stdin and --parallel do not mix");
    }
    let t0 = Instant::now();
    let results: Vec<Result<Outcome, String>> = if o.has("--parallel") {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..count)
                .map(|i| {
                    let plan = &plan;
                    s.spawn(move || plan.run(i))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        })
    } else {
        (0..count).map(|i| plan.run(i)).collect()
    };
    let (mut sent, mut received) = (0, 0);
    for r in results {
        match r {
            Ok(out) => {
                sent += out.sent;
                received += out.received;
            }
            Err(e) => fail(&e),
        }
    }
    println!(
        "{{\"role\":\"client\",\"connect\":\"{addr}\",\"connections\":{count},\
         \"expect\":\"{}\",\"sent\":{sent},\"received\":{received},\"elapsed_ms\":{}}}",
        format!("{expect:?}").to_lowercase(),
        t0.elapsed().as_millis()
    );
}

/// One client connection's script.
struct Plan {
    addr: SocketAddr,
    send: u64,
    recv: u64,
    expect: Expect,
    syn_retries: Option<u64>,
    pause: Duration,
    wait_stdin: bool,
}

impl Plan {
    fn run(&self, i: u64) -> Result<Outcome, String> {
        let ctx = format!("connection {i} to {}", self.addr);
        let t0 = Instant::now();
        let mut s = match (connect(self.addr, self.syn_retries), self.expect) {
            (Ok(s), Expect::Ok | Expect::Reset) => s,
            (Ok(_), e) => return Err(format!("{ctx}: connected, expected {e:?}")),
            (Err(e), Expect::Refused) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                return Ok(Outcome::default());
            }
            (Err(e), Expect::Timeout) if e.raw_os_error() == Some(libc::ETIMEDOUT) => {
                return Ok(Outcome::default());
            }
            (Err(e), want) => {
                return Err(format!(
                    "{ctx}: connect failed after {:?} with {e} (expected {want:?})",
                    t0.elapsed()
                ));
            }
        };
        set_timeouts(&s);
        if self.wait_stdin {
            // The test installs a drop rule now, then releases us with a line on stdin.
            let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
            println!("CONNECTED {port}");
            io::stdout().flush().map_err(|e| e.to_string())?;
            let mut line = String::new();
            io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("{ctx}: stdin: {e}"))?;
        }
        std::thread::sleep(self.pause);
        let exchange = |s: &mut TcpStream| -> io::Result<u64> {
            write_count(s, self.send)?;
            // Awaiting a reset, keep the socket fully open: a shutdown racing the peer's RST
            // would fail with ENOTCONN instead of showing the ECONNRESET the test wants.
            if self.expect != Expect::Reset {
                s.shutdown(Shutdown::Write)?;
            }
            read_exact_count(s, self.recv)?;
            drain(s)
        };
        match (exchange(&mut s), self.expect) {
            (Ok(0), Expect::Ok) => Ok(Outcome {
                sent: self.send,
                received: self.recv,
            }),
            (Ok(extra), Expect::Ok) => Err(format!(
                "{ctx}: {extra} bytes more than --recv-bytes {}",
                self.recv
            )),
            (Err(e), Expect::Reset) if e.kind() == io::ErrorKind::ConnectionReset => {
                Ok(Outcome::default())
            }
            (Ok(_), Expect::Reset) => Err(format!("{ctx}: orderly close, expected a reset")),
            (Err(e), _) => Err(format!("{ctx}: {e}")),
            (Ok(_), e) => unreachable!("connected with expect {e:?}"),
        }
    }
}

/// A blocking connect; `syn_retries` sets TCP_SYNCNT first (how many SYN retransmits before
/// ETIMEDOUT: 1 gives up after about 3 s).
fn connect(addr: SocketAddr, syn_retries: Option<u64>) -> io::Result<TcpStream> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; the fd is owned by the TcpStream right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if let Some(k) = syn_retries {
        setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, k as libc::c_int)?;
    }
    // SAFETY: a zeroed sockaddr_storage is valid; the variant written fits inside it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    loop {
        // SAFETY: storage holds a valid address of `len` bytes.
        let r = unsafe {
            libc::connect(
                fd,
                &storage as *const _ as *const libc::sockaddr,
                len as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(stream);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a c_int option value with its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a linger struct with its exact size, on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
}

/// Waits until `l` has a connection to accept, or fails at `deadline`.
fn wait_readable(l: &TcpListener, deadline: Instant) -> Result<(), String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no connection before the deadline (--timeout-ms)".into());
        }
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
    }
}

/// Writes `n` bytes of a repeating pattern.
fn write_count(s: &mut TcpStream, mut n: u64) -> io::Result<()> {
    let buf = [0x5au8; 16 * 1024];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        s.write_all(&buf[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Reads exactly `n` bytes (EOF before that is an error).
fn read_exact_count(s: &mut TcpStream, mut n: u64) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        s.read_exact(&mut buf[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Reads to EOF; returns how many bytes came before it.
fn drain(s: &mut TcpStream) -> io::Result<u64> {
    io::copy(s, &mut io::sink())
}

/// `--loop N`: in one thread, N times: connect to our own 127.0.0.1 listener, accept, one byte
/// each way, the server side closes first (its TIME_WAIT keeps no client port busy), the client
/// closes. Repeated `--reps` times (at least 5); prints the fastest repetition's wall and thread
/// CPU ns per connection as JSON.
fn loop_main(o: &Opts) {
    let conns = o.num("--loop", 0).max(1);
    let reps = o.num("--reps", 5).max(5);
    if o.has("--private-netns") {
        // Own network namespace: the loop's TIME_WAIT sockets (up to the per-namespace bucket
        // limit) go away with it instead of piling up in the host's namespace.
        private_netns().unwrap_or_else(|e| fail(&format!("--private-netns: {e}")));
    }
    if let Some(cpu) = o.str("--cpu").map(|_| o.num("--cpu", 0) as usize) {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                fail(&format!("pin to CPU {cpu}: {}", io::Error::last_os_error()));
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&format!("bind: {e}")));
    let addr = listener.local_addr().expect("local_addr");
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (t0, c0) = (Instant::now(), thread_cpu_ns());
        for i in 0..conns {
            one_loop_connection(&listener, addr)
                .unwrap_or_else(|e| fail(&format!("loop connection {i}: {e}")));
        }
        wall.push(t0.elapsed().as_nanos() as f64 / conns as f64);
        cpu.push((thread_cpu_ns() - c0) as f64 / conns as f64);
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "{{\"mode\":\"loop\",\"conns\":{conns},\"reps\":{reps},\"ns_per_conn\":{:.1},\
         \"cpu_ns_per_conn\":{:.1},\"wall_ns\":[{}],\"cpu_ns\":[{}]}}",
        min(&wall),
        min(&cpu),
        list(&wall),
        list(&cpu)
    );
}

fn one_loop_connection(listener: &TcpListener, addr: SocketAddr) -> io::Result<()> {
    let mut c = TcpStream::connect(addr)?;
    let (mut s, _) = listener.accept()?;
    let mut b = [0u8; 1];
    c.write_all(b"q")?;
    s.read_exact(&mut b)?;
    s.write_all(b"a")?;
    drop(s);
    c.read_exact(&mut b)?;
    drop(c);
    Ok(())
}

fn thread_cpu_ns() -> u64 {
    // SAFETY: a zeroed timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Moves this process into a new network namespace and brings its loopback up (needs root).
fn private_netns() -> io::Result<()> {
    // SAFETY: plain syscalls on our own process and a socket we close before returning.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let e = io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(e);
        }
    }
    Ok(())
}
