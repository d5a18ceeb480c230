//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find where
//! a member sits in a kernel struct, such as `sk_lock.owned` in
//! `struct sock`: the reset program reads that one byte, and its offset
//! moves with the kernel's configuration.
//!
//! The format: a header, a type section (each type a 12-byte `btf_type`
//! followed by data whose size its kind decides) and a string section
//! (`include/uapi/linux/btf.h`).

use std::path::Path;

/// Why a member's offset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("the kernel's BTF is malformed ({0})")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no member {0} in struct {1}")]
    NoMember(String, String),
}

const MAGIC: u16 = 0xeb9f;

mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// One type: its kind, name, the `size`/`type` word, and its members (for
/// structs and unions: name, type id, bit offset).
struct Type {
    kind: u32,
    name: u32,
    size_or_type: u32,
    members: Vec<(u32, u32, u32)>,
}

/// The types of one BTF blob, by id (id 0 is `void`).
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Btf, BtfError> {
        Btf::read(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn read(path: &Path) -> Result<Btf, BtfError> {
        let data =
            std::fs::read(path).map_err(|err| BtfError::Read(path.display().to_string(), err))?;
        Btf::parse(&data)
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("no BTF header"));
        }
        let header = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            header
                .checked_add(off)
                .and_then(|start| Some((start, start.checked_add(len)?)))
                .and_then(|(start, end)| data.get(start..end))
                .ok_or(BtfError::Malformed("a section lies outside the file"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < type_data.len() {
            let name = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let type_kind = (info >> 24) & 0x1f;
            let bitfields = info >> 31 != 0;
            let mut members = Vec::new();
            let extra = match type_kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION => {
                    for index in 0..vlen {
                        let member = at + index * 12;
                        let offset = u32_at(type_data, member + 8)?;
                        // With the kind flag the top 8 bits are a bitfield's size.
                        let bit_offset = if bitfields {
                            offset & 0xff_ffff
                        } else {
                            offset
                        };
                        members.push((
                            u32_at(type_data, member)?,
                            u32_at(type_data, member + 4)?,
                            bit_offset,
                        ));
                    }
                    12 * vlen
                }
                kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
                kind::DATASEC | kind::ENUM64 => 12 * vlen,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                _ => return Err(BtfError::Malformed("a type of unknown kind")),
            };
            at += extra;
            types.push(Type {
                kind: type_kind,
                name,
                size_or_type,
                members,
            });
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The struct or union a type id comes to through typedefs and
    /// qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let found = self.types.get(id as usize)?;
            match found.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = found.size_or_type;
                }
                kind::STRUCT | kind::UNION => return Some(found),
                _ => return None,
            }
        }
        None
    }

    /// The bit offset of member `name` in `within`, looking into anonymous
    /// structs and unions as C does.
    fn member_bits(&self, within: &Type, name: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for &(member_name, _, bits) in &within.members {
            if member_name != 0 && self.name(member_name) == name.as_bytes() {
                return Some(bits);
            }
        }
        for &(member_name, member_type, bits) in &within.members {
            if member_name == 0 {
                let inner = self.resolve(member_type)?;
                if let Some(found) = self.member_bits(inner, name, depth + 1) {
                    return Some(bits + found);
                }
            }
        }
        None
    }

    /// The byte offset of a member path such as `["sk_lock", "owned"]` in
    /// `struct NAME`.
    pub fn member_offset(&self, structure: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut current = self
            .types
            .iter()
            .find(|found| {
                found.kind == kind::STRUCT && self.name(found.name) == structure.as_bytes()
            })
            .ok_or_else(|| BtfError::NoStruct(structure.to_string()))?;
        let mut bits = 0;
        for (index, member) in path.iter().enumerate() {
            let no_member = || BtfError::NoMember(path[..=index].join("."), structure.to_string());
            bits += self.member_bits(current, member, 0).ok_or_else(no_member)?;
            if index + 1 < path.len() {
                let member_type = current
                    .members
                    .iter()
                    .find(|(name, _, _)| self.name(*name) == member.as_bytes())
                    .map(|(_, member_type, _)| *member_type)
                    .ok_or_else(no_member)?;
                current = self.resolve(member_type).ok_or_else(no_member)?;
            }
        }
        if bits % 8 != 0 {
            return Err(BtfError::Malformed("the member is a bitfield"));
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob of `struct inner { int a; char owned; }`,
    /// `typedef struct inner lock_t;` and
    /// `struct outer { long x; union { int y; int z; }; lock_t lock; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0a\0owned\0inner\0lock_t\0outer\0x\0y\0z\0lock\0char\0long\0";
        let at = |name: &str| {
            let needle = format!("\0{name}\0");
            (strings
                .windows(needle.len())
                .position(|window| window == needle.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut types = Vec::new();
        let mut put = |words: &[u32]| {
            for word in words {
                types.extend_from_slice(&word.to_le_bytes());
            }
        };
        let info = |kind: u32, vlen: u32| kind << 24 | vlen;
        // 1: int
        put(&[at("int"), info(kind::INT, 0), 4, 32]);
        // 2: char
        put(&[at("char"), info(kind::INT, 0), 1, 8]);
        // 3: struct inner { int a; char owned; } (owned at byte 4)
        put(&[at("inner"), info(kind::STRUCT, 2), 8]);
        put(&[at("a"), 1, 0]);
        put(&[at("owned"), 2, 32]);
        // 4: typedef lock_t
        put(&[at("lock_t"), info(kind::TYPEDEF, 0), 3]);
        // 5: long
        put(&[at("long"), info(kind::INT, 0), 8, 64]);
        // 6: anonymous union { int y; int z; }
        put(&[0, info(kind::UNION, 2), 4]);
        put(&[at("y"), 1, 0]);
        put(&[at("z"), 1, 0]);
        // 7: struct outer { long x; union {...}; lock_t lock; }
        put(&[at("outer"), info(kind::STRUCT, 3), 24]);
        put(&[at("x"), 5, 0]);
        put(&[0, 6, 64]);
        put(&[at("lock"), 4, 128]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for word in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(strings);
        blob
    }

    #[test]
    fn a_member_path_through_a_typedef_is_found() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", &["lock", "owned"]).unwrap(), 20);
        assert_eq!(btf.member_offset("outer", &["x"]).unwrap(), 0);
    }

    #[test]
    fn members_of_anonymous_unions_are_found() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", &["z"]).unwrap(), 8);
    }

    #[test]
    fn what_is_not_there_is_named() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(
            btf.member_offset("outer", &["lock", "nothing"])
                .unwrap_err()
                .to_string(),
            "the kernel's BTF has no member lock.nothing in struct outer"
        );
        assert!(matches!(
            btf.member_offset("sock", &["x"]),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn truncated_blobs_are_refused_not_trusted() {
        let whole = blob();
        for len in 0..whole.len() {
            // Either an error or, where the cut falls between types, fewer
            // types: never a panic.
            let _ = Btf::parse(&whole[..len]).map(|btf| btf.member_offset("outer", &["x"]));
        }
    }

    #[test]
    fn the_running_kernels_sock_lock_is_found() {
        let Ok(btf) = Btf::kernel() else {
            return;
        };
        let offset = btf.member_offset("sock", &["sk_lock", "owned"]).unwrap();
        // After struct sock_common (over 100 bytes), well inside struct sock.
        assert!((100..2048).contains(&offset), "{offset}");
    }
}
