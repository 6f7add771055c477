//! Just enough of ELF64 (little endian) to read a kernel module's `.modinfo` section, to tell
//! whether a program is linked statically, and to list the libraries a program needs. Every
//! offset read from the file is bounds-checked.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("ELF file is truncated or has an offset out of bounds ({0})")]
    OutOfBounds(&'static str),
}

const PT_INTERP: u32 = 3;

fn slice<'a>(b: &'a [u8], at: u64, len: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let start = usize::try_from(at).map_err(|_| ElfError::OutOfBounds(what))?;
    let len = usize::try_from(len).map_err(|_| ElfError::OutOfBounds(what))?;
    let end = start.checked_add(len).ok_or(ElfError::OutOfBounds(what))?;
    b.get(start..end).ok_or(ElfError::OutOfBounds(what))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    let s = b.get(at..at + 2).ok_or(ElfError::OutOfBounds("u16"))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    let s = b.get(at..at + 4).ok_or(ElfError::OutOfBounds("u32"))?;
    Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    let s = b.get(at..at + 8).ok_or(ElfError::OutOfBounds("u64"))?;
    Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn check_header(b: &[u8]) -> Result<(), ElfError> {
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    Ok(())
}

/// The contents of the section called `name`, if the file has one.
pub fn section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_header(b)?;
    let shoff = u64_at(b, 0x28)?;
    let shentsize = u64::from(u16_at(b, 0x3a)?);
    let shnum = u64::from(u16_at(b, 0x3c)?);
    let shstrndx = u64::from(u16_at(b, 0x3e)?);
    if shentsize < 64 {
        return Err(ElfError::OutOfBounds("section header size"));
    }
    let header = |i: u64| slice(b, shoff + i * shentsize, 64, "section header");
    let strtab_hdr = header(shstrndx)?;
    let strtab = slice(b, u64_at(strtab_hdr, 0x18)?, u64_at(strtab_hdr, 0x20)?, "section names")?;
    for i in 0..shnum {
        let h = header(i)?;
        let name_off = usize::try_from(u32_at(h, 0)?).map_err(|_| ElfError::OutOfBounds("name"))?;
        let rest = strtab.get(name_off..).ok_or(ElfError::OutOfBounds("section name"))?;
        let end = rest.iter().position(|&c| c == 0).ok_or(ElfError::OutOfBounds("section name"))?;
        if &rest[..end] == name.as_bytes() {
            return slice(b, u64_at(h, 0x18)?, u64_at(h, 0x20)?, "section").map(Some);
        }
    }
    Ok(None)
}

/// Whether the program asks for a dynamic loader (has a `PT_INTERP` program header).
pub fn has_interpreter(b: &[u8]) -> Result<bool, ElfError> {
    check_header(b)?;
    let phoff = u64_at(b, 0x20)?;
    let phentsize = u64::from(u16_at(b, 0x36)?);
    let phnum = u64::from(u16_at(b, 0x38)?);
    if phentsize < 56 {
        return Err(ElfError::OutOfBounds("program header size"));
    }
    for i in 0..phnum {
        let h = slice(b, phoff + i * phentsize, 56, "program header")?;
        if u32_at(h, 0)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What the dynamic section asks of the loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `DT_NEEDED`: the libraries to load, by file name.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH` folders (`:`-separated in the file), in that order.
    pub runpath: Vec<String>,
}

const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// The `.dynamic` section's libraries and search paths (empty for a static program).
pub fn dynamic(b: &[u8]) -> Result<Dynamic, ElfError> {
    let (Some(dynsec), Some(strs)) = (section(b, ".dynamic")?, section(b, ".dynstr")?) else {
        return Ok(Dynamic::default());
    };
    let string = |off: u64| -> Result<String, ElfError> {
        let at = usize::try_from(off).map_err(|_| ElfError::OutOfBounds("dynamic string"))?;
        let rest = strs.get(at..).ok_or(ElfError::OutOfBounds("dynamic string"))?;
        let end =
            rest.iter().position(|&c| c == 0).ok_or(ElfError::OutOfBounds("dynamic string"))?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let mut d = Dynamic::default();
    let mut rpath = Vec::new();
    for entry in dynsec.chunks_exact(16) {
        let tag = u64_at(entry, 0)?;
        let val = u64_at(entry, 8)?;
        match tag {
            DT_NULL => break,
            DT_NEEDED => d.needed.push(string(val)?),
            DT_RUNPATH => d.runpath.extend(string(val)?.split(':').map(str::to_owned)),
            DT_RPATH => rpath.extend(string(val)?.split(':').map(str::to_owned)),
            _ => {}
        }
    }
    d.runpath.extend(rpath);
    d.runpath.retain(|p| !p.is_empty());
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_test_binary() {
        let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read exe");
        assert!(section(&exe, ".text").expect("parse").is_some());
        assert!(section(&exe, ".no-such-section").expect("parse").is_none());
        // Test binaries are linked dynamically against glibc.
        assert!(has_interpreter(&exe).expect("parse"));
        let d = dynamic(&exe).expect("parse");
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
    }

    #[test]
    fn refuses_garbage_and_truncation() {
        assert_eq!(section(b"not an elf", ".x"), Err(ElfError::NotElf64));
        let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read exe");
        // Only the header: every section offset now points past the end.
        assert!(matches!(section(&exe[..64], ".text"), Err(ElfError::OutOfBounds(_))));
        let mut bad = exe[..64].to_vec();
        bad[0x3a] = 1; // section header entries of 1 byte
        assert!(section(&bad, ".text").is_err());
    }
}
