//! TCP listening sockets that existed before the agent started, and the process owning each.
//!
//! The kernel probe learns listeners created later from the `inet_sock_set_state` CLOSE -> LISTEN
//! transition; this one-shot scan of `/proc` covers the older ones, so passive connections to them
//! can be attributed to the right process. Every container has its own network namespace and the
//! same port can be listened on in many of them, so a listener is keyed by (netns, addr, port).
//!
//! [`parse_proc_net_tcp`] is pure; [`scan`] is the I/O shell around it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
};

use super::procfs;

/// A listening TCP socket and the process holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub tgid: u32,
    /// Inode number of the socket's network namespace: what `/proc/<tgid>/ns/net` resolves to and
    /// what the kernel has in `net->ns.inum`.
    pub netns: u32,
    /// As the kernel shows it: an IPv4-mapped IPv6 listener (`::ffff:a.b.c.d`) stays IPv6.
    pub addr: IpAddr,
    pub port: u16,
}

/// What a [`scan`] saw, for the agent's self-metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    /// Distinct network namespaces found.
    pub namespaces: usize,
    /// Processes examined (all of `/proc` except `skip_tgid`).
    pub processes: usize,
    /// fd symlinks read.
    pub fds_read: usize,
    /// Rows of `net/tcp{,6}` that did not parse.
    pub skipped_rows: usize,
    /// Reads that failed because the process exited or we lack permission: a process's `ns/net`
    /// or `fd` directory, a single fd, or every candidate `net/tcp` of a namespace.
    pub unreadable: usize,
}

/// `TCP_LISTEN` in the kernel's `enum tcp_state`, the `st` column.
const TCP_LISTEN: u8 = 0x0A;

/// The LISTEN rows of a `/proc/net/tcp` or `/proc/net/tcp6` file as (addr, port, socket inode).
/// Rows that do not parse are skipped and counted in the second value; the header, blank lines
/// and rows in other states are not counted.
pub fn parse_proc_net_tcp(text: &str) -> (Vec<(IpAddr, u16, u64)>, usize) {
    let mut listeners = Vec::new();
    let mut skipped = 0;
    for line in text.lines() {
        match line.split_whitespace().next() {
            None | Some("sl") => continue,
            Some(_) => {}
        }
        match parse_row(line) {
            Some(Some(l)) => listeners.push(l),
            Some(None) => {}
            None => skipped += 1,
        }
    }
    (listeners, skipped)
}

/// `None`: malformed. `Some(None)`: well-formed but not listening.
fn parse_row(line: &str) -> Option<Option<(IpAddr, u16, u64)>> {
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    let inode = fields.nth(5)?;
    if state.len() != 2 || !is_hex(state) {
        return None;
    }
    if u8::from_str_radix(state, 16).ok()? != TCP_LISTEN {
        return Some(None);
    }
    let (addr, port) = local.split_once(':')?;
    if port.len() != 4 || !is_hex(port) {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(Some((parse_addr(addr)?, port, inode.parse().ok()?)))
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The kernel prints the address as 32-bit words (`%08X`), each the `u32` the word's network-order
/// bytes make in host memory; so the bytes are that number's native-endian bytes. On little-endian
/// hosts (x86_64, aarch64) `0100007F` is 127.0.0.1 and `::1` is `...0000000001000000`.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    if !is_hex(hex) {
        return None;
    }
    let word = |i: usize| u32::from_str_radix(&hex[8 * i..8 * i + 8], 16).map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(Ipv4Addr::from(word(0).ok()?).into()),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i).ok()?);
            }
            Some(Ipv6Addr::from(bytes).into())
        }
        _ => None,
    }
}

/// Scans `proc_root` (normally `/proc`) for listening TCP sockets and their owners, skipping
/// `skip_tgid` (the agent itself).
///
/// Each network namespace's `net/tcp` and `net/tcp6` are read once, through its lowest readable
/// tgid. Owners are then found by reading the `socket:[INODE]` fd symlinks of processes in
/// ascending tgid order, stopping once every listener has one. A listening socket is often held by
/// several processes (forked workers inheriting the fd); we keep one, the lowest tgid, so results
/// are deterministic. Socket inodes are unique across namespaces, so a socket held by a process in
/// another namespace (created before `setns`, or received over a unix socket) is still found.
/// Listeners whose holders we cannot read are left out. Identical entries (one process holding
/// several `SO_REUSEPORT` sockets on one port) are reported once.
///
/// Processes that exit mid-scan and files we may not read are skipped and counted in
/// [`ScanStats::unreadable`]; the only error is failing to list `proc_root` itself.
pub fn scan(proc_root: &Path, skip_tgid: u32) -> io::Result<(Vec<Listener>, ScanStats)> {
    let mut stats = ScanStats::default();
    let mut tgids = procfs::list_tgids(proc_root)?;
    tgids.sort_unstable();

    // netns inode -> its tgids, ascending.
    let mut namespaces: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &tgid in &tgids {
        if tgid == skip_tgid {
            continue;
        }
        stats.processes += 1;
        // `metadata` follows the `net:[N]` magic link to the nsfs inode N.
        match fs::metadata(proc_root.join(tgid.to_string()).join("ns/net")) {
            Ok(m) => namespaces.entry(m.ino() as u32).or_default().push(tgid),
            Err(_) => stats.unreadable += 1,
        }
    }
    stats.namespaces = namespaces.len();

    // socket inode -> (netns, addr, port)
    let mut sockets: HashMap<u64, (u32, IpAddr, u16)> = HashMap::new();
    for (&netns, members) in &namespaces {
        let Some(rows) = read_tables(proc_root, members, &mut stats) else {
            continue;
        };
        for (addr, port, inode) in rows {
            sockets.insert(inode, (netns, addr, port));
        }
    }

    // Ascending across namespaces, so the lowest holding tgid wins.
    let readable: BTreeSet<u32> = namespaces.values().flatten().copied().collect();
    let mut owners: HashMap<u64, u32> = HashMap::new();
    for tgid in readable {
        if owners.len() == sockets.len() {
            break;
        }
        let fds = match fs::read_dir(proc_root.join(tgid.to_string()).join("fd")) {
            Ok(fds) => fds,
            Err(_) => {
                stats.unreadable += 1;
                continue;
            }
        };
        for fd in fds {
            let Ok(target) = fd.and_then(|fd| fs::read_link(fd.path())) else {
                stats.unreadable += 1;
                continue;
            };
            stats.fds_read += 1;
            if let Some(inode) = socket_inode(target.as_os_str().as_bytes())
                && sockets.contains_key(&inode)
            {
                owners.entry(inode).or_insert(tgid);
            }
        }
    }

    let mut listeners: Vec<Listener> = owners
        .into_iter()
        .map(|(inode, tgid)| {
            let (netns, addr, port) = sockets[&inode];
            Listener {
                tgid,
                netns,
                addr,
                port,
            }
        })
        .collect();
    listeners.sort_unstable_by_key(|l| (l.netns, l.port, l.addr, l.tgid));
    listeners.dedup();
    Ok((listeners, stats))
}

/// The LISTEN rows of one namespace's `net/tcp` and `net/tcp6`, read through the first member
/// whose files are readable.
fn read_tables(
    proc_root: &Path,
    members: &[u32],
    stats: &mut ScanStats,
) -> Option<Vec<(IpAddr, u16, u64)>> {
    for &tgid in members {
        let dir = proc_root.join(tgid.to_string());
        let Ok(tcp) = fs::read_to_string(dir.join("net/tcp")) else {
            continue;
        };
        let tcp6 = match fs::read_to_string(dir.join("net/tcp6")) {
            Ok(text) => text,
            // No tcp6 file while the process is still there: IPv6 is disabled.
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.exists() => String::new(),
            Err(_) => continue,
        };
        let (mut rows, skipped) = parse_proc_net_tcp(&tcp);
        let (rows6, skipped6) = parse_proc_net_tcp(&tcp6);
        rows.extend(rows6);
        stats.skipped_rows += skipped + skipped6;
        return Some(rows);
    }
    stats.unreadable += 1;
    None
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::symlink,
        path::PathBuf,
        time::{Instant, SystemTime},
    };

    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     \n";
    const HEADER6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    fn v6(s: &str) -> IpAddr {
        s.parse::<Ipv6Addr>().expect("test address").into()
    }

    /// The first three rows are from this machine's `/proc/net/tcp` (x86_64).
    fn tcp_sample() -> String {
        HEADER.to_owned()
            + "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1074 1 00000000565138df 100 0 0 10 0                      \n"
            + "   1: 020200C0:E6C2 507100CB:01BB 01 00000000:00000000 00:00000000 00000000     0        0 94183 1 000000004ef23711 20 4 1 87 146                    \n"
            + "   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0\n"
            + "   3: 0100007F:1F90 0100007F:C350 06 00000000:00000000 03:00000F9E 00000000     0        0 0 3 0000000000000000\n"
            + "   4: 0100007G:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n"
            + "   5: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 notanumber 1\n"
            + "   6: 0100007F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1\n"
            + "garbage\n"
            + "\n"
            + "   7: 0100007F:1F90 00000000:0000 XY 00000000:00000000 00:00000000 00000000     0        0 779 1\n"
    }

    /// Row 0 was captured from `/proc/net/tcp6` on this machine with a listener on `[::1]:48785`.
    fn tcp6_sample() -> String {
        HEADER6.to_owned()
            + "   0: 00000000000000000000000001000000:BE91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 94393 1 000000008c8a63b1 100 0 0 10 0\n"
            + "   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0\n"
            + "   2: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0\n"
            + "   3: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 20 4 30 10 -1\n"
            + "   4: 000000000000000000000000010000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2004 1\n"
            + "   5: 00000000000000000000000001000000:BE91 00000000000000000000000000000000:0000 0A\n"
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_listen_rows_of_tcp() {
        let (rows, skipped) = parse_proc_net_tcp(&tcp_sample());
        assert_eq!(
            rows,
            vec![
                (v4([0, 0, 0, 0]), 2024, 1074),
                (v4([127, 0, 0, 1]), 8080, 12345),
            ]
        );
        assert_eq!(
            skipped, 5,
            "bad hex, bad inode, no port, garbage, bad state"
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_listen_rows_of_tcp6() {
        let (rows, skipped) = parse_proc_net_tcp(&tcp6_sample());
        assert_eq!(
            rows,
            vec![
                (v6("::1"), 48785, 94393),
                (v6("::"), 80, 2001),
                (v6("::ffff:127.0.0.1"), 8080, 2002),
            ]
        );
        assert_eq!(skipped, 2, "30-digit address, truncated row");
    }

    #[test]
    fn empty_and_header_only_tables() {
        assert_eq!(parse_proc_net_tcp(""), (vec![], 0));
        assert_eq!(parse_proc_net_tcp(HEADER6), (vec![], 0));
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode(b"socket:[94393]"), Some(94393));
        assert_eq!(socket_inode(b"pipe:[94393]"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos();
            let path = std::env::temp_dir()
                .join(format!("tenantscope-{tag}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Builds `<root>/<tgid>` with `ns/net` pointing at `netns` (if any), the given `net/tcp`,
    /// `net/tcp6` (if any) and fd symlinks.
    fn fake_proc(
        root: &Path,
        tgid: u32,
        netns: Option<&Path>,
        tables: Option<(&str, &str)>,
        fds: &[(u32, &str)],
    ) {
        let dir = root.join(tgid.to_string());
        fs::create_dir_all(dir.join("ns")).expect("mkdir ns");
        if let Some(ns) = netns {
            symlink(ns, dir.join("ns/net")).expect("ns/net link");
        }
        if let Some((tcp, tcp6)) = tables {
            fs::create_dir_all(dir.join("net")).expect("mkdir net");
            fs::write(dir.join("net/tcp"), tcp).expect("write tcp");
            fs::write(dir.join("net/tcp6"), tcp6).expect("write tcp6");
        }
        if !fds.is_empty() {
            fs::create_dir_all(dir.join("fd")).expect("mkdir fd");
        }
        for (fd, target) in fds {
            symlink(target, dir.join("fd").join(fd.to_string())).expect("fd link");
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn scans_a_fake_proc_tree_with_two_namespaces() {
        let tmp = TempDir::new("listeners");
        let root = tmp.0.join("proc");
        let (ns_a, ns_b) = (tmp.0.join("net-a"), tmp.0.join("net-b"));
        fs::write(&ns_a, "").expect("ns a");
        fs::write(&ns_b, "").expect("ns b");
        let ino = |p: &Path| fs::metadata(p).expect("ns inode").ino() as u32;
        let (a, b) = (ino(&ns_a), ino(&ns_b));

        let row = |i: u32, local: &str, st: &str, inode: u64| {
            format!(
                "{i:4}: {local} 00000000:0000 {st} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
            )
        };
        let row6 = |i: u32, local: &str, inode: u64| {
            format!(
                "{i:4}: {local} 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
            )
        };
        // Namespace A: 0.0.0.0:80, [::]:80, [::ffff:127.0.0.1]:8080 (nobody readable holds it),
        // an established socket, and a garbage row.
        let tcp_a = HEADER.to_owned()
            + &row(0, "00000000:0050", "0A", 1001)
            + &row(1, "0100007F:0050", "01", 5555)
            + "   2: zz\n";
        let tcp6_a = HEADER6.to_owned()
            + &row6(0, "00000000000000000000000000000000:0050", 1002)
            + &row6(1, "0000000000000000FFFF00000100007F:1F90", 1003);
        // Namespace B: the same port 80 on 127.0.0.1; no tcp6 file (IPv6 disabled).
        let tcp_b = HEADER.to_owned() + &row(0, "0100007F:0050", "0A", 2001);

        // tgid 50 is the agent: skipped although it holds 1001 with the lowest tgid.
        fake_proc(&root, 50, Some(&ns_a), None, &[(9, "socket:[1001]")]);
        // A forked worker pair: both hold 1001, the lowest tgid owns it.
        fake_proc(
            &root,
            100,
            Some(&ns_a),
            Some((&tcp_a, &tcp6_a)),
            &[(0, "/dev/null"), (3, "socket:[1001]"), (4, "socket:[5555]")],
        );
        fake_proc(
            &root,
            101,
            Some(&ns_a),
            None,
            &[(3, "socket:[1001]"), (5, "socket:[1002]"), (6, "pipe:[77]")],
        );
        // fd directory unreadable (here: missing).
        fake_proc(&root, 150, Some(&ns_a), None, &[]);
        // Namespace B: tgid 200 has no net dir (exited zombie), so 201's tables are used.
        fake_proc(&root, 200, Some(&ns_b), None, &[]);
        fake_proc(&root, 201, Some(&ns_b), None, &[(3, "socket:[2001]")]);
        let dir201 = root.join("201/net");
        fs::create_dir_all(&dir201).expect("mkdir net");
        fs::write(dir201.join("tcp"), tcp_b).expect("write tcp");
        // Vanished: no ns/net.
        fake_proc(&root, 300, None, None, &[]);
        // Not processes.
        fs::create_dir_all(root.join("self")).expect("mkdir self");
        fs::write(root.join("uptime"), "1.0 1.0\n").expect("write uptime");

        let (listeners, stats) = scan(&root, 50).expect("scan");
        let l = |tgid, netns, addr, port| Listener {
            tgid,
            netns,
            addr,
            port,
        };
        let mut want = vec![
            l(100, a, v4([0, 0, 0, 0]), 80),
            l(101, a, v6("::"), 80),
            l(201, b, v4([127, 0, 0, 1]), 80),
        ];
        want.sort_unstable_by_key(|l| (l.netns, l.port, l.addr, l.tgid));
        assert_eq!(listeners, want);
        assert_eq!(
            stats,
            ScanStats {
                namespaces: 2,
                processes: 6,
                fds_read: 7,
                skipped_rows: 1,
                // 300's ns/net; the fd dirs of 150 and 200.
                unreadable: 3,
            }
        );
    }

    #[test]
    fn scan_of_a_missing_proc_root_is_an_error() {
        let tmp = TempDir::new("listeners-missing");
        assert!(scan(&tmp.0.join("nope"), 0).is_err());
    }

    /// Against the real `/proc`: our own process is always readable, root or not.
    #[test]
    fn finds_our_own_listeners_in_real_proc() {
        let tgid = std::process::id();
        let netns = fs::metadata("/proc/self/ns/net")
            .expect("/proc/self/ns/net")
            .ino() as u32;
        let l4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let l6 = match std::net::TcpListener::bind("[::1]:0") {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("skipping the IPv6 half: cannot bind [::1]:0: {e}");
                None
            }
        };

        let start = Instant::now();
        let (listeners, stats) = scan(Path::new("/proc"), 0).expect("scan /proc");
        eprintln!(
            "scan(/proc) took {:?}: {} listeners, {stats:?}",
            start.elapsed(),
            listeners.len()
        );

        let mut want = vec![Listener {
            tgid,
            netns,
            addr: v4([127, 0, 0, 1]),
            port: l4.local_addr().expect("local addr").port(),
        }];
        if let Some(l6) = &l6 {
            want.push(Listener {
                tgid,
                netns,
                addr: v6("::1"),
                port: l6.local_addr().expect("local addr").port(),
            });
        }
        for w in &want {
            assert!(
                listeners.contains(w),
                "{w:?} missing from the scan: {listeners:?}"
            );
        }
    }
}
