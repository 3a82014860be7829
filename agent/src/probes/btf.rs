//! A minimal reader of raw kernel BTF (`/sys/kernel/btf/vmlinux`, no ELF) that resolves struct
//! member byte offsets and sizes by name path.
//!
//! Rust eBPF programs have no CO-RE relocations, so kernel programs read socket and namespace
//! fields with `bpf_probe_read_kernel` at offsets that userspace resolves here at load time.
//! Written in-house because btf-rs is LGPL and aya-obj keeps its BTF type table `pub(crate)`.
//!
//! [`Btf::parse`] makes one pass over the type section to index where each type record starts;
//! lookups then scan by name. Every read is bounds-checked and every walk is bounded (type chains,
//! anonymous-member nesting, members visited), so arbitrary input yields `Err`, never a panic or
//! an endless loop.

use std::ops::Range;

/// Where the running kernel exposes its own BTF.
const SYS_FS_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
/// `struct btf_header` as of every kernel so far; a longer header is allowed (newer fields).
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;
/// `struct btf_member`: name_off, type, offset.
const MEMBER_LEN: usize = 12;

/// Bound on typedef/modifier chains, array nesting and anonymous-member nesting.
const MAX_DEPTH: u32 = 32;
/// Bound on members visited by one lookup; real kernel structs need a few hundred. Without it a
/// crafted blob whose anonymous members fan out to each other could take exponential time.
const MAX_VISITS: u32 = 1 << 20;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FLOAT: u32 = 16;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Kernel pointers; this agent only targets 64-bit kernels.
const POINTER_SIZE: u64 = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {error}")]
    Io { path: String, error: String },
    #[error(
        "bad BTF magic {found:#06x}: expected 0xeb9f in little-endian byte order \
         (big-endian BTF is not supported)"
    )]
    BadMagic { found: u16 },
    #[error("unsupported BTF version {0} (only version 1 is known)")]
    UnsupportedVersion(u8),
    #[error("truncated BTF: {what} needs bytes {start}..{end} but the blob has {available}")]
    Truncated {
        what: &'static str,
        start: u64,
        end: u64,
        available: u64,
    },
    #[error("unknown BTF kind {kind} at type id {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("BTF type id {id} is out of range (the blob has {count} types)")]
    BadTypeId { id: u32, count: u32 },
    #[error("struct `{0}` not found in BTF")]
    StructNotFound(String),
    #[error("member `{path}` not found in `{strukt}`")]
    MemberNotFound { strukt: String, path: String },
    #[error("member `{path}` of `{strukt}` is a bitfield; it has no byte offset of its own")]
    Bitfield { strukt: String, path: String },
    #[error("member `{path}` of `{strukt}` starts at bit {bit_offset}, not on a byte boundary")]
    Unaligned {
        strukt: String,
        path: String,
        bit_offset: u64,
    },
    #[error(
        "path `{path}` in `{strukt}` goes through a {kind}, not a struct or union \
         (pointers cannot be followed)"
    )]
    NotComposite {
        strukt: String,
        path: String,
        kind: &'static str,
    },
    #[error("member `{path}` of `{strukt}` has a type without a size ({kind})")]
    Unsized {
        strukt: String,
        path: String,
        kind: &'static str,
    },
    #[error("offset or size of member `{path}` in `{strukt}` does not fit in u32")]
    Overflow { strukt: String, path: String },
    #[error("BTF type chain at type id {id} is deeper than {MAX_DEPTH} levels (cycle?)")]
    TooDeep { id: u32 },
    #[error("looking up `{path}` in `{strukt}` visited more than {MAX_VISITS} members")]
    TooComplex { strukt: String, path: String },
}

/// Where a member lives, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Offset from the start of the outer struct named in [`Btf::member`].
    pub offset: u32,
    pub size: u32,
}

/// A parsed BTF blob: the bytes plus an index of where each type record starts.
pub struct Btf {
    data: Vec<u8>,
    types: Range<usize>,
    strings: Range<usize>,
    /// `offsets[i]` is the start of type id `i + 1`, relative to `types.start`.
    offsets: Vec<u32>,
}

/// The common header of one type record.
#[derive(Debug, Clone, Copy)]
struct TypeRec {
    id: u32,
    /// 0 for `void` (type id 0).
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// Absolute offset of the record in `data`.
    pos: usize,
}

/// A member found by name, before path-level checks.
#[derive(Debug, Clone, Copy)]
struct Found {
    bit_offset: u64,
    bitfield_bits: u32,
    type_id: u32,
}

enum Size {
    Sized(u64),
    Unsized(&'static str),
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_path(SYS_FS_VMLINUX)
    }

    fn from_path(path: &str) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|e| BtfError::Io {
            path: path.to_owned(),
            error: e.to_string(),
        })?;
        Self::from_vec(data)
    }

    /// Parses a raw BTF blob (header, type section, string section). Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        Self::from_vec(bytes.to_vec())
    }

    fn from_vec(data: Vec<u8>) -> Result<Self, BtfError> {
        let len = data.len() as u64;
        let truncated = |what, start: u64, end: u64| BtfError::Truncated {
            what,
            start,
            end,
            available: len,
        };
        if data.len() < HEADER_LEN {
            return Err(truncated("the header", 0, HEADER_LEN as u64));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != MAGIC {
            return Err(BtfError::BadMagic { found: magic });
        }
        if data[2] != 1 {
            return Err(BtfError::UnsupportedVersion(data[2]));
        }
        let field = |at: usize| u64::from(le_u32(&data, at).unwrap_or(0));
        let hdr_len = field(4);
        if hdr_len < HEADER_LEN as u64 || hdr_len > len {
            return Err(truncated(
                "the header (per hdr_len)",
                0,
                hdr_len.max(HEADER_LEN as u64),
            ));
        }
        let section = |what, off: u64, size: u64| -> Result<Range<usize>, BtfError> {
            // u32 + u32 + u32 cannot overflow u64.
            let (start, end) = (hdr_len + off, hdr_len + off + size);
            if end > len {
                return Err(truncated(what, start, end));
            }
            Ok(start as usize..end as usize)
        };
        let types = section("the type section", field(8), field(12))?;
        let strings = section("the string section", field(16), field(20))?;

        let mut offsets = Vec::with_capacity(types.len() / 32);
        let mut rel = 0usize;
        while rel < types.len() {
            let id = offsets.len() as u32 + 1;
            let abs = types.start + rel;
            let head_end = rel + TYPE_LEN;
            if head_end > types.len() {
                return Err(truncated(
                    "a type record",
                    abs as u64,
                    (abs + TYPE_LEN) as u64,
                ));
            }
            let info = le_u32(&data, abs + 4).unwrap_or(0);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(BtfError::UnknownKind { kind, id }),
            };
            let end = head_end + extra;
            if end > types.len() {
                return Err(truncated(
                    "a type record",
                    abs as u64,
                    (types.start + end) as u64,
                ));
            }
            offsets.push(rel as u32);
            rel = end;
        }
        Ok(Self {
            data,
            types,
            strings,
            offsets,
        })
    }

    /// Offset and size of the member reached from struct `strukt` by `path`, e.g.
    /// `member("sock", &["__sk_common", "skc_family"])`, `member("net", &["ns", "inum"])` or
    /// `member("tcp_sock", &["bytes_acked"])`. Members of anonymous structs and unions are found
    /// as if they were direct members. An empty path gives the whole struct (offset 0).
    pub fn member(&self, strukt: &str, path: &[&str]) -> Result<Member, BtfError> {
        let root = self.find_struct(strukt)?;
        let shown = |upto: usize| path[..upto].join(".");
        let mut budget = MAX_VISITS;
        let mut cur = root;
        let mut bits: u64 = 0;
        let mut last = root.id;
        for (i, name) in path.iter().enumerate() {
            let here = || shown(i + 1);
            let found = if name.is_empty() {
                None
            } else {
                self.find_member(cur, name.as_bytes(), 0, &mut budget)
                    .map_err(|e| match e {
                        BtfError::TooComplex { .. } => BtfError::TooComplex {
                            strukt: strukt.to_owned(),
                            path: here(),
                        },
                        e => e,
                    })?
            };
            let found = found.ok_or_else(|| BtfError::MemberNotFound {
                strukt: strukt.to_owned(),
                path: here(),
            })?;
            if found.bitfield_bits != 0 {
                return Err(BtfError::Bitfield {
                    strukt: strukt.to_owned(),
                    path: here(),
                });
            }
            bits = bits.saturating_add(found.bit_offset);
            if !bits.is_multiple_of(8) {
                return Err(BtfError::Unaligned {
                    strukt: strukt.to_owned(),
                    path: here(),
                    bit_offset: bits,
                });
            }
            last = found.type_id;
            if i + 1 < path.len() {
                let t = self.strip(found.type_id)?;
                if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
                    return Err(BtfError::NotComposite {
                        strukt: strukt.to_owned(),
                        path: here(),
                        kind: kind_name(t.kind),
                    });
                }
                cur = t;
            } else if self.is_int_bitfield(found.type_id)? {
                // Without kind_flag, pahole encodes bitfields in the member's INT type instead.
                return Err(BtfError::Bitfield {
                    strukt: strukt.to_owned(),
                    path: here(),
                });
            }
        }
        let here = || shown(path.len());
        let size = match self.size_of(last, 0)? {
            Size::Sized(s) => s,
            Size::Unsized(kind) => {
                return Err(BtfError::Unsized {
                    strukt: strukt.to_owned(),
                    path: here(),
                    kind,
                });
            }
        };
        match (u32::try_from(bits / 8), u32::try_from(size)) {
            (Ok(offset), Ok(size)) => Ok(Member { offset, size }),
            _ => Err(BtfError::Overflow {
                strukt: strukt.to_owned(),
                path: here(),
            }),
        }
    }

    /// The first STRUCT named `name` that has members, else the first empty one.
    fn find_struct(&self, name: &str) -> Result<TypeRec, BtfError> {
        let not_found = || BtfError::StructNotFound(name.to_owned());
        if name.is_empty() {
            return Err(not_found());
        }
        let mut empty = None;
        for id in 1..=self.offsets.len() as u32 {
            let t = self.ty(id)?;
            if t.kind != KIND_STRUCT || !self.name_is(self.name_off(&t), name.as_bytes()) {
                continue;
            }
            if t.vlen > 0 {
                return Ok(t);
            }
            empty.get_or_insert(t);
        }
        empty.ok_or_else(not_found)
    }

    /// Depth-first search of `t`'s members, descending into anonymous structs and unions.
    fn find_member(
        &self,
        t: TypeRec,
        name: &[u8],
        depth: u32,
        budget: &mut u32,
    ) -> Result<Option<Found>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep { id: t.id });
        }
        for m in 0..t.vlen as usize {
            *budget = budget.checked_sub(1).ok_or(BtfError::TooComplex {
                strukt: String::new(),
                path: String::new(),
            })?;
            let at = t.pos + TYPE_LEN + m * MEMBER_LEN;
            let name_off = self.u32_at(at)?;
            let type_id = self.u32_at(at + 4)?;
            let raw = self.u32_at(at + 8)?;
            let (bit_offset, bitfield_bits) = if t.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if self.name_is(name_off, b"") {
                let inner = self.strip(type_id)?;
                if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                    && let Some(mut f) = self.find_member(inner, name, depth + 1, budget)?
                {
                    f.bit_offset = f.bit_offset.saturating_add(u64::from(bit_offset));
                    f.bitfield_bits |= bitfield_bits;
                    return Ok(Some(f));
                }
                continue;
            }
            if self.name_is(name_off, name) {
                return Ok(Some(Found {
                    bit_offset: u64::from(bit_offset),
                    bitfield_bits,
                    type_id,
                }));
            }
        }
        Ok(None)
    }

    /// Size in bytes of type `id`, through modifiers, typedefs and arrays.
    fn size_of(&self, id: u32, depth: u32) -> Result<Size, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep { id });
        }
        let t = self.strip(id)?;
        Ok(match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Size::Sized(u64::from(t.size_or_type))
            }
            KIND_PTR => Size::Sized(POINTER_SIZE),
            KIND_ARRAY => {
                let elem = self.u32_at(t.pos + TYPE_LEN)?;
                let nelems = self.u32_at(t.pos + TYPE_LEN + 8)?;
                match self.size_of(elem, depth + 1)? {
                    // Capped at u32::MAX + 1 so nested arrays cannot overflow u64; the caller
                    // reports anything above u32::MAX.
                    Size::Sized(s) => {
                        Size::Sized((s * u64::from(nelems)).min(u64::from(u32::MAX) + 1))
                    }
                    no_size => no_size,
                }
            }
            other => Size::Unsized(kind_name(other)),
        })
    }

    /// True if `id` (through modifiers) is an INT whose encoding says it is a bitfield.
    fn is_int_bitfield(&self, id: u32) -> Result<bool, BtfError> {
        let t = self.strip(id)?;
        if t.kind != KIND_INT {
            return Ok(false);
        }
        let enc = self.u32_at(t.pos + TYPE_LEN)?;
        let (bit_offset, bits) = ((enc >> 16) & 0xff, enc & 0xff);
        Ok(bit_offset != 0 || u64::from(bits) < u64::from(t.size_or_type) * 8)
    }

    /// Follows typedef, const, volatile, restrict and type_tag to the underlying type.
    fn strip(&self, mut id: u32) -> Result<TypeRec, BtfError> {
        for _ in 0..=MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(t),
            }
        }
        Err(BtfError::TooDeep { id })
    }

    fn ty(&self, id: u32) -> Result<TypeRec, BtfError> {
        if id == 0 {
            return Ok(TypeRec {
                id,
                kind: 0,
                vlen: 0,
                kind_flag: false,
                size_or_type: 0,
                pos: 0,
            });
        }
        let rel = self
            .offsets
            .get(id as usize - 1)
            .ok_or(BtfError::BadTypeId {
                id,
                count: self.offsets.len() as u32,
            })?;
        let pos = self.types.start + *rel as usize;
        let info = self.u32_at(pos + 4)?;
        Ok(TypeRec {
            id,
            kind: (info >> 24) & 0x1f,
            vlen: info & 0xffff,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32_at(pos + 8)?,
            pos,
        })
    }

    fn name_off(&self, t: &TypeRec) -> u32 {
        // `ty` already read this word, so it is in bounds.
        le_u32(&self.data, t.pos).unwrap_or(0)
    }

    /// True if the NUL-terminated string at `off` equals `name`; false if out of bounds.
    fn name_is(&self, off: u32, name: &[u8]) -> bool {
        let strings = &self.data[self.strings.clone()];
        let start = off as usize;
        let end = start.saturating_add(name.len());
        strings.get(start..end) == Some(name) && strings.get(end) == Some(&0)
    }

    fn u32_at(&self, at: usize) -> Result<u32, BtfError> {
        le_u32(&self.data, at).ok_or(BtfError::Truncated {
            what: "a type record",
            start: at as u64,
            end: at as u64 + 4,
            available: self.data.len() as u64,
        })
    }
}

fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        0 => "void",
        1 => "int",
        2 => "pointer",
        3 => "array",
        4 => "struct",
        5 => "union",
        6 => "enum",
        7 => "forward declaration",
        8 => "typedef",
        9 => "volatile",
        10 => "const",
        11 => "restrict",
        12 => "function",
        13 => "function prototype",
        14 => "variable",
        15 => "data section",
        16 => "float",
        17 => "declaration tag",
        18 => "type tag",
        19 => "enum64",
        _ => "unknown kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes BTF blobs by hand; ids are handed out in call order starting at 1.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn head(&mut self, name: &str, kind: u32, kflag: bool, vlen: u32, size: u32) -> u32 {
            let name = self.str(name);
            let info = (u32::from(kflag) << 31) | (kind << 24) | vlen;
            self.words(&[name, info, size]);
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32, bits: u32) -> u32 {
            let id = self.head(name, 1, false, 0, size);
            self.words(&[bits]);
            id
        }

        fn modifier(&mut self, kind: u32, name: &str, target: u32) -> u32 {
            self.head(name, kind, false, 0, target)
        }

        fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.head("", 3, false, 0, 0);
            self.words(&[elem, index, n]);
            id
        }

        /// `members`: (name, type id, offset word as stored).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            kflag: bool,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.head(name, kind, kflag, members.len() as u32, size);
            for (n, ty, off) in members {
                let n = self.str(n);
                self.words(&[n, *ty, *off]);
            }
            id
        }

        fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            let (tl, sl) = (self.types.len() as u32, self.strings.len() as u32);
            for w in [HEADER_LEN as u32, 0, tl, tl, sl] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// Builds a blob with every BTF kind, so a wrong record size shows up as a failed lookup of
    /// `tail`, which comes last.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4, 32);
        let ushort = b.int("unsigned short", 2, 16);
        let char_ = b.int("char", 1, 8);
        let long = b.int("long", 8, 64);
        let int3 = b.int("int", 4, 3); // legacy bitfield encoding
        // Forward-ish empty struct and a FWD of the same name, before the full definition.
        b.composite(4, "outer", false, 0, &[]);
        b.modifier(7, "outer", 0);
        let inner = b.composite(4, "inner", false, 8, &[("a", int, 0), ("b", int, 32)]);
        let inner_t = b.modifier(8, "inner_t", inner);
        let const_inner_t = b.modifier(10, "", inner_t);
        let ptr = b.modifier(2, "", inner);
        let anon_s = b.composite(4, "", false, 8, &[("x", int, 0), ("y", ushort, 32)]);
        let anon_u = b.composite(5, "", false, 8, &[("u", long, 0), ("", anon_s, 0)]);
        let name = b.array(char_, int, 16);
        // kind_flag offsets: low 24 bits bit offset, high 8 bits bitfield size.
        b.composite(
            4,
            "outer",
            true,
            48,
            &[
                ("fam", ushort, 0),
                ("flags", int, (3 << 24) | 16),
                ("", anon_u, 64),
                ("nested", const_inner_t, 128),
                ("p", ptr, 192),
                ("name", name, 256),
            ],
        );
        b.composite(
            4,
            "legacy",
            false,
            8,
            &[("bits", int3, 0), ("odd", char_, 36)],
        );
        // The remaining kinds, with their trailing data.
        let e = b.head("e", 6, false, 2, 4);
        b.words(&[b.strings.len() as u32, 0, 0, 1]);
        let proto = b.head("", 13, false, 1, int);
        b.words(&[0, int]);
        b.modifier(12, "f", proto);
        let var = b.head("v", 14, false, 0, int);
        b.words(&[1]);
        b.head(".data", 15, false, 1, 4);
        b.words(&[var, 0, 4]);
        let float = b.head("float", 16, false, 0, 4);
        b.head("tag", 17, false, 0, int);
        b.words(&[u32::MAX]);
        let tagged = b.modifier(18, "user", int);
        let e64 = b.head("e64", 19, false, 1, 8);
        b.words(&[0, 1, 0]);
        let vol = b.modifier(9, "", long);
        let restrict = b.modifier(11, "", ptr);
        let matrix = b.array(name, int, 3);
        b.composite(
            4,
            "tail",
            false,
            96,
            &[
                ("e", e, 0),
                ("e64", e64, 64),
                ("fl", float, 128),
                ("tagged", tagged, 160),
                ("vol", vol, 192),
                ("restrict", restrict, 256),
                ("matrix", matrix, 320),
                ("un", anon_u, 704),
            ],
        );
        b.composite(5, "only_union", false, 4, &[("a", int, 0)]);
        b.composite(4, "loop", false, 4, &[("", b.next_id, 0)]);
        b.modifier(8, "self", b.next_id);
        b.composite(4, "selfref", false, 4, &[("x", b.next_id - 1, 0)]);
        b.finish()
    }

    fn m(offset: u32, size: u32) -> Member {
        Member { offset, size }
    }

    #[test]
    fn resolves_synthetic_members() {
        let btf = Btf::parse(&sample()).expect("sample parses");
        let get = |s: &str, p: &[&str]| btf.member(s, p);
        assert_eq!(get("outer", &["fam"]), Ok(m(0, 2)));
        assert_eq!(get("outer", &["u"]), Ok(m(8, 8)));
        assert_eq!(get("outer", &["x"]), Ok(m(8, 4)));
        assert_eq!(get("outer", &["y"]), Ok(m(12, 2)));
        assert_eq!(get("outer", &["nested"]), Ok(m(16, 8)));
        assert_eq!(get("outer", &["nested", "b"]), Ok(m(20, 4)));
        assert_eq!(get("outer", &["p"]), Ok(m(24, 8)));
        assert_eq!(get("outer", &["name"]), Ok(m(32, 16)));
        assert_eq!(get("outer", &[]), Ok(m(0, 48)));
        assert_eq!(get("inner", &["b"]), Ok(m(4, 4)));
        for (field, offset, size) in [
            ("e", 0, 4),
            ("e64", 8, 8),
            ("fl", 16, 4),
            ("tagged", 20, 4),
            ("vol", 24, 8),
            ("restrict", 32, 8),
            ("matrix", 40, 48),
            ("un", 88, 8),
        ] {
            assert_eq!(get("tail", &[field]), Ok(m(offset, size)), "tail.{field}");
        }
        // A named (not anonymous) union member, then a member of its anonymous struct.
        assert_eq!(get("tail", &["un", "y"]), Ok(m(92, 2)));
    }

    #[test]
    fn reports_each_lookup_error() {
        let btf = Btf::parse(&sample()).expect("sample parses");
        let s = |v: &str| v.to_owned();
        assert_eq!(
            btf.member("missing", &["a"]),
            Err(BtfError::StructNotFound(s("missing")))
        );
        assert_eq!(btf.member("", &[]), Err(BtfError::StructNotFound(s(""))));
        // Only STRUCT types are roots: not unions, not typedefs.
        assert!(matches!(
            btf.member("only_union", &["a"]),
            Err(BtfError::StructNotFound(_))
        ));
        assert!(matches!(
            btf.member("inner_t", &[]),
            Err(BtfError::StructNotFound(_))
        ));
        assert_eq!(
            btf.member("outer", &["nested", "zz"]),
            Err(BtfError::MemberNotFound {
                strukt: s("outer"),
                path: s("nested.zz")
            })
        );
        assert!(matches!(
            btf.member("outer", &[""]),
            Err(BtfError::MemberNotFound { .. })
        ));
        assert_eq!(
            btf.member("outer", &["flags"]),
            Err(BtfError::Bitfield {
                strukt: s("outer"),
                path: s("flags")
            })
        );
        assert_eq!(
            btf.member("legacy", &["bits"]),
            Err(BtfError::Bitfield {
                strukt: s("legacy"),
                path: s("bits")
            })
        );
        assert_eq!(
            btf.member("legacy", &["odd"]),
            Err(BtfError::Unaligned {
                strukt: s("legacy"),
                path: s("odd"),
                bit_offset: 36
            })
        );
        assert_eq!(
            btf.member("outer", &["p", "a"]),
            Err(BtfError::NotComposite {
                strukt: s("outer"),
                path: s("p"),
                kind: "pointer"
            })
        );
        assert_eq!(
            btf.member("outer", &["fam", "x"]),
            Err(BtfError::NotComposite {
                strukt: s("outer"),
                path: s("fam"),
                kind: "int"
            })
        );
        // An anonymous member that contains itself, and a typedef of itself.
        assert!(matches!(
            btf.member("loop", &["zz"]),
            Err(BtfError::TooDeep { .. })
        ));
        assert!(matches!(
            btf.member("selfref", &["x"]),
            Err(BtfError::TooDeep { .. })
        ));
        let msg = btf.member("outer", &["p", "a"]).unwrap_err().to_string();
        assert!(msg.contains("`p`") && msg.contains("pointer"), "{msg}");
    }

    #[test]
    fn reports_each_parse_error() {
        let good = sample();
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(matches!(Btf::parse(&bad), Err(BtfError::BadMagic { .. })));
        let mut be = good.clone();
        be.swap(0, 1);
        assert_eq!(
            Btf::parse(&be).err(),
            Some(BtfError::BadMagic { found: 0x9feb })
        );
        let mut v2 = good.clone();
        v2[2] = 2;
        assert_eq!(Btf::parse(&v2).err(), Some(BtfError::UnsupportedVersion(2)));
        assert!(matches!(
            Btf::parse(&good[..good.len() - 1]),
            Err(BtfError::Truncated {
                what: "the string section",
                ..
            })
        ));
        assert!(matches!(
            Btf::parse(&good[..10]),
            Err(BtfError::Truncated {
                what: "the header",
                ..
            })
        ));
        // Kind 25 as the second type.
        let mut b = Builder::new();
        b.int("int", 4, 32);
        b.head("x", 25, false, 0, 0);
        assert_eq!(
            Btf::parse(&b.finish()).err(),
            Some(BtfError::UnknownKind { kind: 25, id: 2 })
        );
        let msg = BtfError::UnknownKind { kind: 25, id: 2 }.to_string();
        assert_eq!(msg, "unknown BTF kind 25 at type id 2");
        // A member pointing past the last type id.
        let mut b = Builder::new();
        b.composite(4, "s", false, 4, &[("a", 99, 0)]);
        let btf = Btf::parse(&b.finish()).expect("parses");
        assert_eq!(
            btf.member("s", &["a"]),
            Err(BtfError::BadTypeId { id: 99, count: 1 })
        );
        assert!(matches!(
            Btf::from_path("/nonexistent/btf/vmlinux"),
            Err(BtfError::Io { .. })
        ));
    }

    /// Parses and queries without caring about the outcome; only panics and hangs fail.
    fn poke(bytes: &[u8]) {
        if let Ok(btf) = Btf::parse(bytes) {
            for (s, p) in [
                ("outer", &["x"][..]),
                ("outer", &["nested", "b"]),
                ("outer", &["name"]),
                ("tail", &["matrix"]),
                ("loop", &["zz"]),
                ("legacy", &["odd"]),
                ("inner", &[]),
            ] {
                let _ = btf.member(s, p);
            }
        }
    }

    #[test]
    fn survives_truncation_and_garbage() {
        let good = sample();
        for n in 0..=good.len() {
            poke(&good[..n]);
        }
        // Header kept but sections shrunk: the type section ends mid-record.
        for cut in 1..40u32 {
            let mut short = good.clone();
            let tl = u32::from_le_bytes(short[12..16].try_into().unwrap());
            short[12..16].copy_from_slice(&(tl - cut).to_le_bytes());
            poke(&short);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut blob = good.clone();
            for _ in 0..1 + next() % 4 {
                // Keep the magic and version mostly intact so mutations reach the type walk.
                let at = HEADER_LEN.min(4) + (next() as usize) % (blob.len() - 4);
                blob[at] = next() as u8;
            }
            poke(&blob);
        }
        poke(&[]);
        poke(&[0x9f, 0xeb, 1, 0, 0xff, 0xff, 0xff, 0xff]);
        let mut huge = vec![0x9f, 0xeb, 1, 0];
        huge.extend_from_slice(&[0xff; 20]);
        poke(&huge);
    }

    #[test]
    fn resolves_running_kernel_socket_fields() {
        if !std::path::Path::new(SYS_FS_VMLINUX).exists() {
            println!("skipping: {SYS_FS_VMLINUX} is absent (kernel built without BTF)");
            return;
        }
        let start = std::time::Instant::now();
        let btf = Btf::from_sys_fs().expect("kernel BTF parses");
        let parsed = start.elapsed();
        let sk = |f: &'static str| ("sock", vec!["__sk_common", f]);
        let cases: Vec<((&str, Vec<&str>), u32)> = vec![
            (sk("skc_family"), 2),
            (sk("skc_num"), 2),
            (sk("skc_dport"), 2),
            (sk("skc_daddr"), 4),
            (sk("skc_rcv_saddr"), 4),
            (sk("skc_v6_daddr"), 16),
            (sk("skc_v6_rcv_saddr"), 16),
            (sk("skc_net"), 8),
            (("sock", vec!["sk_err"]), 4),
            (("sock", vec!["sk_protocol"]), 2),
            (("net", vec!["ns", "inum"]), 4),
            (("tcp_sock", vec!["bytes_acked"]), 8),
            (("tcp_sock", vec!["bytes_received"]), 8),
            (("tcp_sock", vec!["srtt_us"]), 4),
            (("tcp_sock", vec!["total_retrans"]), 4),
        ];
        let mut found = Vec::new();
        for ((s, path), size) in &cases {
            let got = btf
                .member(s, path)
                .unwrap_or_else(|e| panic!("{s}.{}: {e}", path.join(".")));
            assert_eq!(got.size, *size, "{s}.{}", path.join("."));
            found.push(format!("{s}.{} = {got:?}", path.join(".")));
        }
        let total = start.elapsed();
        println!(
            "kernel BTF: {} types, parse {parsed:?}, parse + {} lookups {total:?}",
            btf.offsets.len(),
            cases.len()
        );
        for line in &found {
            println!("  {line}");
        }
        #[cfg(target_arch = "x86_64")]
        {
            let off = |f: &str| btf.member("sock", &["__sk_common", f]).unwrap().offset;
            assert_eq!(off("skc_daddr"), 0);
            assert_eq!(off("skc_rcv_saddr"), 4);
            assert_eq!(off("skc_family"), 16);
        }
    }
}
