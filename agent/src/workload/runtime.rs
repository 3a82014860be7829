//! Which runtime a process's executable carries, from its ELF sections: the parenting rule
//! ([`crate::parenting`]) must not apply thread-based parents to M:N runtimes, where one OS
//! thread runs many tasks in turn. Go executables are recognised by the sections the Go linker
//! always writes (build info, build id note, pc-line table), which survive `-ldflags=-s -w`.

use std::path::Path;

use object::{Object as _, ObjectSection as _, ReadCache, ReadRef};

/// What a process runs, as far as parenting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// A Go executable: goroutines move between OS threads.
    Go,
    /// Anything else (C, Python, Java, Rust...): its threads are taken at their word.
    Native,
    /// The executable could not be read (the process is gone, or access was refused).
    Unknown,
}

impl Runtime {
    /// Whether an OS thread may run several tasks in turn, so that the thread a call is made
    /// on says nothing about the request it serves. Unknown counts as yes: never a wrong parent.
    pub fn multitasks(self) -> bool {
        !matches!(self, Runtime::Native)
    }
}

/// Sections only the Go toolchain writes.
const GO_SECTIONS: [&str; 3] = [".go.buildinfo", ".note.go.buildid", ".gopclntab"];

/// The runtime of an ELF image; `None` when `data` is not an object file `object` can read.
pub fn detect<'a, R: ReadRef<'a>>(data: R) -> Option<Runtime> {
    let file = object::File::parse(data).ok()?;
    let go = file
        .sections()
        .any(|s| s.name().is_ok_and(|n| GO_SECTIONS.contains(&n)));
    Some(if go { Runtime::Go } else { Runtime::Native })
}

/// The runtime of process `tgid`, from `<proc_root>/<tgid>/exe`; reads only the ELF headers
/// and section table, not the whole executable.
pub fn of_process(proc_root: &Path, tgid: u32) -> Runtime {
    let Ok(file) = std::fs::File::open(proc_root.join(tgid.to_string()).join("exe")) else {
        return Runtime::Unknown;
    };
    let cache = ReadCache::new(file);
    // A readable file that is not ELF (a script interpreter is the exe, so this is rare).
    detect(&cache).unwrap_or(Runtime::Native)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_native() {
        let me = std::fs::read("/proc/self/exe").expect("own executable");
        assert_eq!(detect(&me[..]), Some(Runtime::Native));
        assert_eq!(
            of_process(Path::new("/proc"), std::process::id()),
            Runtime::Native
        );
        assert!(!Runtime::Native.multitasks());
    }

    #[test]
    fn a_go_section_makes_a_go_binary() {
        // A minimal ELF64 object with one section named .go.buildinfo, written by `object`.
        let mut obj = object::write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let id = obj.add_section(
            Vec::new(),
            b".go.buildinfo".to_vec(),
            object::SectionKind::ReadOnlyData,
        );
        obj.append_section_data(id, b"\xff Go buildinf:", 16);
        let bytes = obj.write().expect("an object file");
        assert_eq!(detect(&bytes[..]), Some(Runtime::Go));
        assert!(Runtime::Go.multitasks());
    }

    #[test]
    fn unreadable_or_foreign_input_is_not_a_panic() {
        assert_eq!(detect(&b"#!/bin/sh\n"[..]), None);
        assert_eq!(detect(&[0x7f, b'E', b'L', b'F', 2, 1, 1][..]), None);
        assert_eq!(of_process(Path::new("/nonexistent"), 1), Runtime::Unknown);
        assert!(Runtime::Unknown.multitasks(), "unknown is never trusted");
    }
}
