//! `/proc/<pid>/cgroup` -> the container a process runs in.
//!
//! Pure and synchronous: the caller reads the file, this module only parses text, so the tests run
//! on real captured samples (`testdata/`, sources in `testdata/README.md`) without a kernel.
//!
//! Each line is `hierarchy-id:controller-list:path`. A cgroup v2 host has one `0::/path` line, a v1
//! host one line per hierarchy, a hybrid host both. In a path, the container is the deepest
//! component that is a 64-hex id, bare or with a known runtime prefix and an optional `.scope`:
//!
//! ```text
//! /docker/<id>                                              docker, cgroupfs driver
//! /system.slice/docker-<id>.scope                           docker, systemd driver
//! /kubepods/burstable/pod<uid>/<id>                         kubelet, cgroupfs driver
//! /kubepods.slice/.../kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//! /kubepods.slice/.../crio-<id>.scope, /kubepods/.../pod<uid>/crio-<id>
//! /machine.slice/libpod-<id>.scope/container                podman (also under user@<uid>.service)
//! ```
//!
//! "Deepest" handles nesting both ways: kind nodes and docker-in-docker put a whole container tree
//! below an outer container, and runtimes add sub-cgroups (`/container`, `/init.scope`) below theirs.

/// The container runtime a cgroup path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A container id with nothing in the path saying which runtime made it.
    Unknown,
}

impl Runtime {
    /// Stable lowercase name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

/// The container a process belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// Full container id, lowercase hex (64 chars for all runtimes above).
    pub id: String,
    /// Kubernetes pod UID in canonical dashed form (systemd slices spell it with underscores), when
    /// the path has one.
    pub pod_uid: Option<String>,
}

impl ContainerRef {
    /// The first 12 characters of the id, as `docker ps` prints it.
    pub fn short_id(&self) -> &str {
        // The fields are public, so the id may not be one this module produced.
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// The container of the process whose `/proc/<pid>/cgroup` is `contents`.
///
/// None for host processes (not in a container) and for input that matches no pattern.
pub fn container_from_proc_cgroup(contents: &str) -> Option<ContainerRef> {
    let mut first_v1 = None;
    for line in contents.lines() {
        // Malformed lines are skipped rather than failing the whole file.
        let Some((unified, path)) = split_line(line) else {
            continue;
        };
        if unified {
            // The v2 line is authoritative when it names a container. On hybrid hosts it can be
            // a plain service (`0::/system.slice/containerd.service`) while the v1 lines name the
            // container, hence the fallback below.
            if let Some(found) = container_from_path(path) {
                return Some(found);
            }
        } else if first_v1.is_none() {
            first_v1 = container_from_path(path);
        }
    }
    first_v1
}

/// Splits `id:controllers:path` into (is the cgroup v2 line, path).
fn split_line(line: &str) -> Option<(bool, &str)> {
    // splitn: the path itself may contain `:` (testdata/containerd-systemd-triple-v1.cgroup).
    let mut fields = line.trim().splitn(3, ':');
    let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
        return None;
    }
    Some((id == "0" && controllers.is_empty(), path))
}

/// What one path component says about the process.
enum Component<'a> {
    Container(Runtime, &'a str),
    /// CRI-O's and podman's per-container monitor (conmon): it carries the container's id but
    /// is a host process, not the workload.
    Monitor,
    Other,
}

/// Runtime prefixes of container cgroup names. The conmon prefixes must come first, as they also
/// start with a container prefix.
const PREFIXES: &[(&str, Option<Runtime>)] = &[
    ("crio-conmon-", None),
    ("libpod-conmon-", None),
    ("cri-containerd-", Some(Runtime::Containerd)),
    ("crio-", Some(Runtime::CriO)),
    ("docker-", Some(Runtime::Docker)),
    // Quadlet units running podman with `--cgroups=split`.
    ("libpod-payload-", Some(Runtime::Podman)),
    ("libpod-", Some(Runtime::Podman)),
];

fn container_from_path(path: &str) -> Option<ContainerRef> {
    // ':' separates components too: a kubelet on the systemd driver passes the triple
    // `<pod slice>:cri-containerd:<id>` as cgroupsPath, and a runc left on cgroupfs (containerd's
    // SystemdCgroup = false) uses it as one directory name.
    // "." and ".." appear when the reader is in another cgroup namespace than the process.
    let parts: Vec<&str> = path
        .split(['/', ':'])
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    for (i, part) in parts.iter().enumerate().rev() {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        match classify(part, parent) {
            Component::Container(runtime, id) => {
                return Some(ContainerRef {
                    runtime,
                    id: id.to_owned(),
                    pod_uid: parts[..i].iter().rev().find_map(|c| pod_uid(c)),
                });
            }
            Component::Monitor => return None,
            Component::Other => {}
        }
    }
    None
}

fn classify<'a>(part: &'a str, parent: Option<&str>) -> Component<'a> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix)
            && is_hex(id, 64)
        {
            return match runtime {
                Some(runtime) => Component::Container(*runtime, id),
                None => Component::Monitor,
            };
        }
    }
    if !is_hex(name, 64) {
        return Component::Other;
    }
    // A bare id says nothing about its runtime, so only a parent that names one counts: `docker`
    // (cgroupfs driver) or the runtime field of a colon triple. Under `/kubepods/.../pod<uid>/` the
    // kubelet's cgroupfs driver names the container cgroup by bare id for dockershim and containerd
    // alike, so guessing containerd there would mislabel older Docker nodes. Only the parent
    // counts, not any ancestor: a kind node is `/docker/<node id>/...` with containerd inside it.
    let runtime = match parent {
        Some("docker") => Runtime::Docker,
        Some("cri-containerd") => Runtime::Containerd,
        Some("crio") => Runtime::CriO,
        _ => Runtime::Unknown,
    };
    Component::Container(runtime, name)
}

/// The pod UID in a pod cgroup name: `pod<uid>` (cgroupfs driver) or `<qos prefix>-pod<uid>.slice`
/// with `-` escaped to `_` (systemd driver).
fn pod_uid(part: &str) -> Option<String> {
    let raw = match part.strip_suffix(".slice") {
        Some(slice) => &slice[slice.rfind("-pod")? + "-pod".len()..],
        None => part.strip_prefix("pod")?,
    };
    let uid = raw.replace('_', "-");
    // A UUID, or 32 hex for static pods, whose UID is a hash of the manifest.
    let is_uuid = uid.len() == 36
        && uid.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && uid.split('-').all(|group| is_hex(group, group.len()));
    (is_uuid || is_hex(&uid, 32)).then_some(uid)
}

/// `s` is exactly `len` lowercase hex digits. Runtimes print ids in lowercase; accepting only that
/// keeps words such as `Deadbeef...` from passing for an id.
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One real `/proc/<pid>/cgroup` sample and what it must parse to.
    struct Sample {
        file: &'static str,
        contents: &'static str,
        /// (runtime, id, pod uid), or None for "not a container".
        want: Option<(Runtime, &'static str, Option<&'static str>)>,
    }

    macro_rules! sample {
        ($file:literal, $want:expr) => {
            Sample {
                file: $file,
                contents: include_str!(concat!("testdata/", $file)),
                want: $want,
            }
        };
    }

    use Runtime::*;

    fn samples() -> Vec<Sample> {
        vec![
            // containerd
            sample!(
                "containerd-systemd-hybrid.cgroup",
                Some((
                    Containerd,
                    "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830",
                    Some("dd1bf9d1-241d-47f5-8e25-12de83135812")
                ))
            ),
            sample!(
                "containerd-systemd-v2.cgroup",
                Some((
                    Containerd,
                    "25d057a4c6c9555f2a0eb106e8896968c28f1c44aca4754174851aca7f89ad26",
                    Some("9493223b-520e-4a97-a45f-359dcf967006")
                ))
            ),
            sample!(
                "containerd-systemd-triple-v1.cgroup",
                Some((
                    Containerd,
                    "d3d8ccf5cca91931c6285c1d7472c413dd5a7700fddc0aa9f89a9ac7008b003e",
                    Some("2105e389-7471-476e-a50f-6074cef29bbd")
                ))
            ),
            // A bare id under /kubepods: the runtime is not in the path.
            sample!(
                "containerd-cgroupfs-v1.cgroup",
                Some((
                    Unknown,
                    "5dd96d5394ca930a854a390ea46f7515a8bc930123eb3251ba20f2708a38fc61",
                    Some("a36d0c1d-0b26-4451-8d80-9c195e004afa")
                ))
            ),
            sample!(
                "kubepods-cgroupfs-hybrid.cgroup",
                Some((
                    Unknown,
                    "95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8",
                    Some("8833712d-6e69-4f5c-95f3-aebd020ce2e7")
                ))
            ),
            sample!(
                "kubepods-cgroupfs-subcgroup-v1.cgroup",
                Some((
                    Unknown,
                    "c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903",
                    Some("f8a694f2-7c08-11e9-98da-000c29077430")
                ))
            ),
            // kind: containerd nodes that are themselves docker containers.
            sample!(
                "kind-containerd-in-docker-v2.cgroup",
                Some((
                    Containerd,
                    "99f3a16ea25b7724cb56a4f0c0df1113ad9474fbf5545bead97fd5c7f61c13f4",
                    Some("eab5a334-93fe-48a8-b139-9e8079c1f163")
                ))
            ),
            sample!(
                "kind-containerd-in-docker-v1.cgroup",
                Some((
                    Containerd,
                    "ecbcea5cd29afb25ba519715e827cda9e66cd0a914207f49ce0a292a6aa84d66",
                    Some("d8992f589d8dd12c4342376ccb459375")
                ))
            ),
            // cri-o
            sample!(
                "crio-systemd-v1.cgroup",
                Some((
                    CriO,
                    "d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607",
                    Some("8ca306fa-3c03-47fa-97dd-19979c345572")
                ))
            ),
            sample!(
                "crio-systemd-static-pod-v1.cgroup",
                Some((
                    CriO,
                    "7a1fd6fe8cdfbd44dc78c4cc85dad7031eaab4365801684cad0aabdeaf863f9e",
                    Some("487a0dc6dccaeefbcfedba7a7ce1ca18")
                ))
            ),
            sample!(
                "crio-systemd-v2.cgroup",
                Some((
                    CriO,
                    "f33f47b0db740bb647cb3e7ac62d96c74966dbb99cbfaf4563bfd42d387e8b44",
                    Some("042efd86-1f3b-4f2f-8736-f31c58e95bbc")
                ))
            ),
            sample!(
                "crio-cgroupfs-v1-line.cgroup",
                Some((
                    CriO,
                    "af208fd68bf39a07a439ed0c9b6609b9ae63ecd8a5f1a2af3e0db48b945b320a",
                    Some("26ba375c-2266-4ecc-bf2d-b626db8762af")
                ))
            ),
            sample!("crio-conmon-v2.cgroup", None),
            // docker
            sample!(
                "docker-cgroupfs-v1.cgroup",
                Some((
                    Docker,
                    "b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f",
                    None
                ))
            ),
            sample!(
                "docker-systemd-v1.cgroup",
                Some((
                    Docker,
                    "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d",
                    None
                ))
            ),
            sample!(
                "docker-systemd-hybrid.cgroup",
                Some((
                    Docker,
                    "cf87ba651579c9231db817909e7865e5747bd7abcac0c57ce23cf4abbaee046b",
                    None
                ))
            ),
            sample!(
                "docker-cgroupns-relative-v2.cgroup",
                Some((
                    Docker,
                    "ba7b10d15d16e10e3de7a2dcd408a3d971169ae303f46cfad4c5453c6326fee2",
                    None
                ))
            ),
            sample!(
                "docker-kubepods-systemd-v2.cgroup",
                Some((
                    Docker,
                    "73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd",
                    Some("8712f785-1a3e-41ec-a00b-e2dcc77431cb")
                ))
            ),
            sample!(
                "docker-in-docker-v1.cgroup",
                Some((
                    Docker,
                    "ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a",
                    None
                ))
            ),
            // Read from inside the container's own cgroup namespace: the path is just "/".
            sample!("docker-cgroupns-root-v2.cgroup", None),
            // podman
            sample!(
                "podman-rootful-v2.cgroup",
                Some((
                    Podman,
                    "06dc5f321aad8726aa26559f16ec203bc099245bc44894b14a89fc02b022d1d5",
                    None
                ))
            ),
            sample!(
                "podman-rootless-v2.cgroup",
                Some((
                    Podman,
                    "3f05ee050f82c0145f1d88c94269c39dff0f07dbf8bba20aafd54b3a75dcaecc",
                    None
                ))
            ),
            sample!(
                "podman-user0-v2.cgroup",
                Some((
                    Podman,
                    "cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb",
                    None
                ))
            ),
            // host processes and containers this module does not name
            sample!("host-v1.cgroup", None),
            sample!("host-systemd-service-v1.cgroup", None),
            sample!("host-hybrid.cgroup", None),
            sample!("host-v2-init.cgroup", None),
            sample!("host-this-machine-v1.cgroup", None),
            sample!("lxc-v2.cgroup", None),
        ]
    }

    #[test]
    fn real_samples() {
        for s in samples() {
            let got = container_from_proc_cgroup(s.contents);
            let want = s.want.map(|(runtime, id, pod_uid)| ContainerRef {
                runtime,
                id: id.to_owned(),
                pod_uid: pod_uid.map(str::to_owned),
            });
            assert_eq!(got, want, "testdata/{}", s.file);
        }
    }

    #[test]
    fn every_testdata_file_is_tested() {
        // The checkout this run is in (not the one a shared CARGO_TARGET_DIR compiled it in).
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
            .join("src/workload/testdata");
        let tested: Vec<&str> = samples().iter().map(|s| s.file).collect();
        for entry in std::fs::read_dir(dir).expect("testdata directory is readable") {
            let name = entry.expect("testdata entry").file_name();
            let name = name.to_str().expect("testdata names are UTF-8");
            if name.ends_with(".cgroup") {
                assert!(tested.contains(&name), "testdata/{name} has no test");
            }
        }
    }

    #[test]
    fn prefers_the_v2_line_on_hybrid_hosts() {
        // The v1 lines of a real sample, followed by a v2 line naming another container.
        let v1 = include_str!("testdata/docker-systemd-v1.cgroup");
        let v2 = include_str!("testdata/containerd-systemd-v2.cgroup");
        let got = container_from_proc_cgroup(&format!("{v1}{v2}")).expect("a container");
        assert_eq!(got.runtime, Containerd, "the 0:: line wins");
        // And the first v1 line that names a container when the v2 line does not.
        let got = container_from_proc_cgroup(&format!("{v1}0::/init.scope\n")).expect("v1");
        assert_eq!(got.runtime, Docker, "falls back to v1");
    }

    #[test]
    fn monitors_are_not_containers() {
        // testdata/crio-conmon-v2.cgroup is a real one (conmon_cgroup = "system.slice"). conmon
        // can also sit beside the container, as `<prefix>-conmon-<id>.scope` in the same parent:
        // derive those from real container samples.
        for (file, contents, prefix, conmon) in [
            (
                "crio-systemd-v2.cgroup",
                include_str!("testdata/crio-systemd-v2.cgroup"),
                "/crio-",
                "/crio-conmon-",
            ),
            (
                "podman-rootful-v2.cgroup",
                include_str!("testdata/podman-rootful-v2.cgroup"),
                "/libpod-",
                "/libpod-conmon-",
            ),
        ] {
            assert!(container_from_proc_cgroup(contents).is_some(), "{file}");
            // podman's conmon scope has no `/container` sub-cgroup.
            let monitor = contents.replace(prefix, conmon).replace("/container", "");
            assert_eq!(container_from_proc_cgroup(&monitor), None, "{monitor:?}");
        }
    }

    #[test]
    fn short_id_and_names() {
        let c = container_from_proc_cgroup(include_str!("testdata/podman-rootful-v2.cgroup"))
            .expect("a container");
        assert_eq!(c.short_id(), "06dc5f321aad");
        assert_eq!(c.runtime.as_str(), "podman");
        let odd = ContainerRef {
            runtime: Unknown,
            // Byte 12 falls inside an 'é'.
            id: format!("a{}", "é".repeat(7)),
            pod_uid: None,
        };
        assert_eq!(odd.short_id(), odd.id, "never slices inside a character");
        let names = [Containerd, CriO, Docker, Podman, Unknown].map(Runtime::as_str);
        assert_eq!(
            names,
            ["containerd", "cri-o", "docker", "podman", "unknown"]
        );
    }

    #[test]
    fn hostile_inputs() {
        let id = "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830";
        let none = [
            "",
            "\n\n",
            "0::",
            "0::/",
            "::/docker/abc",
            "x:cpu:/docker/",
            "garbage",
            ":::::::",
            "0::relative/docker-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope",
            // Not 64 lowercase hex digits.
            "0::/docker/F45298CD514D1930C4FE3AFC4412E59547F7E3148FDDD22CA33CEFCE046EB830",
            "0::/docker/f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb83",
            "0::/docker/f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb8300",
            "0::/system.slice/docker-.scope",
            "0::/system.slice/docker.service",
            "0::/ÿ/é/🦀/docker-é.scope",
            "4294967296999999999:memory:/../../..",
        ];
        for input in none {
            assert_eq!(container_from_proc_cgroup(input), None, "{input:?}");
        }
        // Surrounding whitespace, CRLF line ends and an unknown pod spelling are tolerated.
        let crlf = format!("  0::/kubepods/besteffort/podnot-a-uid/{id}  \r\n");
        let got = container_from_proc_cgroup(&crlf).expect("a container");
        assert_eq!((got.id.as_str(), got.pod_uid), (id, None));
    }

    /// A deterministic stand-in for a fuzzer: lines of random cgroup-ish fragments.
    #[test]
    fn random_inputs_never_panic() {
        const HEADERS: &[&str] = &["0::", "1:name=systemd:", "12:cpu,cpuacct:", "x:", "", "0:"];
        const FRAGMENTS: &[&str] = &[
            "/",
            "/",
            "/",
            ":",
            "..",
            "docker",
            "docker-",
            "crio-",
            "crio-conmon-",
            "libpod-",
            "cri-containerd-",
            ".scope",
            ".slice",
            "pod",
            "-pod",
            "_",
            "-",
            "kubepods",
            "a",
            "é",
            "🦀",
            "\0",
            "\r",
            " ",
            "\n",
            "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830",
            "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830",
            "dd1bf9d1_241d_47f5_8e25_12de83135812",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            // xorshift64: enough to spread the fragments, and reproducible.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut found = 0;
        for _ in 0..20_000 {
            let mut input = String::new();
            for _ in 0..1 + next(3) {
                input.push_str(HEADERS[next(HEADERS.len())]);
                for _ in 0..next(10) {
                    input.push_str(FRAGMENTS[next(FRAGMENTS.len())]);
                }
                input.push('\n');
            }
            if let Some(c) = container_from_proc_cgroup(&input) {
                assert!(is_hex(&c.id, 64), "{input:?} gave id {:?}", c.id);
                assert_eq!(c.short_id().len(), 12, "{input:?}");
                found += 1;
            }
        }
        // Otherwise the generator never reached the code that builds a ContainerRef.
        assert!(found > 20, "only {found} random inputs named a container");
    }
}
