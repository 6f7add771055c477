//! An operator's own disk image made an Atrium image (`atrium-node image import`): any x86-64
//! OS on a disk its firmware boots (UEFI or BIOS).
//!
//! The recipe, in order; a step that fails leaves nothing behind:
//! 1. the file's format is told from its first bytes, never guessed by QEMU: qcow2, VMDK (a
//!    monolithic sparse file), VHDX, or raw; VMDK descriptors (which name other files) and VHD
//!    are refused, and so is a qcow2 with a backing file or an external data file;
//! 2. `qemu-img check` for the formats that have metadata (a damaged table is refused);
//! 3. the file is hashed (SHA-256, kept in the manifest) and converted to the image's base disk
//!    (`disk.qcow2`, never written again; each VM gets a layer over it);
//! 4. the converted disk's partition table is checked, which is also what finds a file cut
//!    short: GPT's backup header sits in the disk's last sector, and an MBR's partitions must
//!    end within the disk; a UEFI image needs GPT or an EFI system partition;
//! 5. the manifest is written (firmware, agent or not, the source's name, format and hash, the
//!    base disk's hash) and the folder appears under its final name only when whole.
//!
//! A node checks an image's hashes when it loads it, and each file's size and modification time
//! before each boot ([`super::Image::unchanged`]): an image changed since is not booted.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use atrium_protocol::node::validate_name;
use thiserror::Error;

use super::{
    Boot, DiskFormat, DiskSpec, FileRecord, Firmware, FirmwareSpec, Image, ImportRecord,
    MANIFEST_FILE, MANIFEST_FORMAT, Manifest, debs,
};

/// Bumped when an import makes different images from the same file.
pub const IMPORTER_VERSION: u32 = 1;
/// The largest disk an image may have.
pub const MAX_DISK_BYTES: u64 = 4 << 40;
const SECTOR: u64 = 512;
const SECTOR_BYTES: usize = 512;

#[derive(Debug, Error)]
pub enum ImportError {
    /// The file or the options are not an image Atrium can boot; nothing was written.
    #[error("{0}")]
    Refused(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Tool(String),
}

fn refused(why: impl Into<String>) -> ImportError {
    ImportError::Refused(why.into())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io { path: path.to_owned(), source }
}

/// What to import, and how the image boots.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub source: PathBuf,
    pub name: String,
    pub version: String,
    pub firmware: Firmware,
    /// The file's format as the operator says it is (else read from its first bytes).
    pub format: Option<SourceFormat>,
    pub secure_boot: bool,
    /// A virtual TPM 2.0 per VM.
    pub tpm: bool,
    /// Atrium's guest agent is installed in the image.
    pub agent: bool,
    pub min_memory_mib: u32,
    /// The image folder to make (it must not exist).
    pub out: PathBuf,
    pub qemu_img: PathBuf,
}

/// A disk file's format, as its first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Qcow2,
    Vmdk,
    Vhdx,
    Raw,
}

impl std::str::FromStr for SourceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qcow2" => Ok(Self::Qcow2),
            "vmdk" => Ok(Self::Vmdk),
            "vhdx" => Ok(Self::Vhdx),
            "raw" => Ok(Self::Raw),
            other => Err(format!("unknown format {other:?} (qcow2, vmdk, vhdx or raw)")),
        }
    }
}

impl SourceFormat {
    /// The name `qemu-img -f` takes.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Vmdk => "vmdk",
            Self::Vhdx => "vhdx",
            Self::Raw => "raw",
        }
    }
}

/// Tells a file's format from its first bytes (`head`, up to 512) and its last 512 (`tail`, a
/// VHD's footer), refusing what is not one disk in one file.
pub fn detect_format(head: &[u8], tail: &[u8]) -> Result<SourceFormat, ImportError> {
    if head.starts_with(b"QFI\xfb") {
        return Ok(SourceFormat::Qcow2);
    }
    if head.starts_with(b"KDMV") {
        return Ok(SourceFormat::Vmdk);
    }
    if head.starts_with(b"# Disk DescriptorFile") {
        return Err(refused(
            "this is a VMDK descriptor, which names other files: import a monolithic VMDK \
             (qemu-img convert -O vmdk -o subformat=monolithicSparse), or its flat file as raw",
        ));
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(SourceFormat::Vhdx);
    }
    if head.starts_with(b"conectix") || tail.starts_with(b"conectix") {
        return Err(refused(
            "this is a VHD (Virtual PC) disk, which Atrium does not import: convert it to VHDX or \
             qcow2 first (qemu-img convert -f vpc -O qcow2)",
        ));
    }
    Ok(SourceFormat::Raw)
}

/// What `qemu-img info` says of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub virtual_size: u64,
}

/// Reads `qemu-img info --output=json` of `source` (its canonical path): the disk's size, and
/// refuses a disk that reads other files (a backing file, an external data file, a VMDK whose
/// extents are not the file itself: a descriptor inside a VMDK may name any file).
pub fn parse_info(json: &str, source: &Path) -> Result<DiskInfo, ImportError> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ImportError::Tool(format!("qemu-img info gave no JSON: {e}")))?;
    if v.get("format").and_then(serde_json::Value::as_str) == Some("vmdk") {
        let extents = v.pointer("/format-specific/data/extents").and_then(|e| e.as_array());
        let own = extents.is_some_and(|e| {
            e.len() == 1
                && e[0].get("filename").and_then(serde_json::Value::as_str)
                    == Some(&*source.to_string_lossy())
        });
        if !own {
            return Err(refused(
                "the VMDK's data is not all in the file itself (its descriptor names other \
                 files): import a monolithic VMDK",
            ));
        }
    }
    if v.get("backing-filename").is_some() || v.get("full-backing-filename").is_some() {
        return Err(refused(
            "the disk has a backing file: import a disk that stands alone (qemu-img convert \
             flattens one)",
        ));
    }
    if v.pointer("/format-specific/data/data-file").is_some() {
        return Err(refused("the qcow2 disk keeps its data in another file: flatten it first"));
    }
    let virtual_size = v
        .get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| ImportError::Tool("qemu-img info gave no virtual-size".into()))?;
    if virtual_size < 1 << 20 || virtual_size % SECTOR != 0 {
        return Err(refused(format!(
            "the disk is {virtual_size} bytes: a bootable disk is at least 1 MiB of whole sectors"
        )));
    }
    if virtual_size > MAX_DISK_BYTES {
        return Err(refused(format!(
            "the disk is {virtual_size} bytes, more than the {} TiB an image may have",
            MAX_DISK_BYTES >> 40
        )));
    }
    Ok(DiskInfo { virtual_size })
}

/// The partition table a disk has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionTable {
    Gpt {
        partitions: u32,
    },
    /// An MBR; `esp` when one of its partitions is an EFI system partition (type 0xEF).
    Mbr {
        partitions: u32,
        esp: bool,
    },
}

/// Checks a disk's partition table from its first 34 sectors (`head`: MBR, GPT header, the
/// partition entries) and its last sector (`last`, where GPT's backup header is), the disk being
/// `sectors` long. A disk cut short loses its backup GPT header, or has partitions past its end.
pub fn check_partitions(
    head: &[u8],
    last: &[u8],
    sectors: u64,
) -> Result<PartitionTable, ImportError> {
    if sectors < 34 {
        return Err(refused(format!("the disk has {sectors} sectors: too small to boot")));
    }
    if head.len() < 2 * SECTOR_BYTES || head[510..512] != [0x55, 0xaa] {
        return Err(refused(
            "the disk has no partition table (no boot signature in its first sector): it is \
             not a bootable disk, or not a disk image at all",
        ));
    }
    let entry = |i: usize| &head[446 + 16 * i..446 + 16 * (i + 1)];
    let protective = (0..4).any(|i| entry(i)[4] == 0xee);
    if !protective {
        let mut partitions = 0;
        let mut esp = false;
        for i in 0..4 {
            let e = entry(i);
            if e[4] == 0 {
                continue;
            }
            let start = u64::from(u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")));
            let count = u64::from(u32::from_le_bytes(e[12..16].try_into().expect("4 bytes")));
            if start == 0 || start + count > sectors {
                return Err(refused(format!(
                    "partition {} (sectors {start} to {}) lies beyond the disk's {sectors} \
                     sectors: the file is truncated or damaged",
                    i + 1,
                    start + count
                )));
            }
            partitions += 1;
            esp |= e[4] == 0xef;
        }
        if partitions == 0 {
            return Err(refused("the disk's partition table is empty"));
        }
        return Ok(PartitionTable::Mbr { partitions, esp });
    }
    let primary = gpt_header(&head[SECTOR_BYTES..2 * SECTOR_BYTES], 1)
        .map_err(|why| refused(format!("the disk's GPT header is damaged: {why}")))?;
    if primary.alternate != sectors - 1 {
        return Err(refused(format!(
            "the disk's GPT says it ends at sector {}, but it has {sectors} sectors: the file is \
             truncated, or was grown without moving its backup GPT (sgdisk -e fixes that)",
            primary.alternate
        )));
    }
    gpt_header(last, sectors - 1).map_err(|why| {
        refused(format!(
            "the disk's backup GPT header (its last sector) is missing or damaged ({why}): the \
             file is truncated or damaged"
        ))
    })?;
    if primary.last_usable >= sectors {
        return Err(refused("the disk's GPT has partitions beyond its end"));
    }
    Ok(PartitionTable::Gpt { partitions: primary.entries })
}

struct GptHeader {
    alternate: u64,
    last_usable: u64,
    entries: u32,
}

/// A GPT header at sector `lba`: signature, size and CRC.
fn gpt_header(sector: &[u8], lba: u64) -> Result<GptHeader, String> {
    if sector.len() < SECTOR_BYTES || &sector[..8] != b"EFI PART" {
        return Err("no \"EFI PART\" signature".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(sector[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(sector[o..o + 8].try_into().expect("8 bytes"));
    let size = u32_at(12) as usize;
    if !(92..=SECTOR_BYTES).contains(&size) {
        return Err(format!("a header of {size} bytes"));
    }
    let mut copy = sector[..size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != u32_at(16) {
        return Err("its CRC does not match".into());
    }
    if u64_at(24) != lba {
        return Err(format!("it says it is at sector {}, not {lba}", u64_at(24)));
    }
    Ok(GptHeader { alternate: u64_at(32), last_usable: u64_at(48), entries: u32_at(80) })
}

/// Imports `opts.source` into the image folder `opts.out`.
pub fn import(opts: &ImportOptions) -> Result<Image, ImportError> {
    validate_name("name", &opts.name, 64).map_err(|e| refused(e.to_string()))?;
    validate_name("version", &opts.version, 64).map_err(|e| refused(e.to_string()))?;
    if opts.secure_boot && opts.firmware != Firmware::Uefi {
        return Err(refused("Secure Boot needs UEFI firmware (--firmware uefi)"));
    }
    if opts.out.exists() {
        return Err(refused(format!(
            "{} exists: an image version is imported once (choose another --version)",
            opts.out.display()
        )));
    }
    // An absolute path: qemu-img reads `json:...` or `nbd:...` as a protocol, `-x` as an option.
    let source = opts.source.canonicalize().map_err(io_err(&opts.source))?;
    let meta = std::fs::metadata(&source).map_err(io_err(&source))?;
    if !meta.is_file() {
        return Err(refused(format!("{} is not a regular file", source.display())));
    }
    let source_name =
        source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (head, tail) = ends_of(&source, meta.len())?;
    let format = match opts.format {
        Some(f) => f,
        None => detect_format(&head, &tail)?,
    };
    let info = parse_info(
        &qemu_img(&opts.qemu_img, &["info", "--output=json", "-f", format.qemu_name()], &source)?,
        &source,
    )?;
    if format != SourceFormat::Raw {
        check_metadata(&opts.qemu_img, format, &source)?;
    }
    let source_sha256 = debs::sha256_file(&source).map_err(|e| ImportError::Tool(e.to_string()))?;

    // Made aside (the catalog skips dot folders), renamed into place when whole; a second
    // import of the same version at once finds the work folder there and stops.
    let parent = opts.out.parent().unwrap_or(Path::new("."));
    let leaf = opts.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let work = parent.join(format!(".{leaf}.importing"));
    let made_parent = !parent.exists();
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    std::fs::create_dir(&work).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            refused(format!(
                "{} exists: another import of this version runs (or one was cut off: remove it)",
                work.display()
            ))
        } else {
            ImportError::Io { path: work.clone(), source: e }
        }
    })?;
    let made = (|| {
        let disk = work.join("disk.qcow2");
        qemu_img_status(
            &opts.qemu_img,
            &["convert", "-f", format.qemu_name(), "-O", "qcow2"],
            &[&source, &disk],
        )?;
        let sectors = info.virtual_size / SECTOR;
        let head = read_sectors(&opts.qemu_img, &disk, &work, 0, 34)?;
        let last = read_sectors(&opts.qemu_img, &disk, &work, sectors - 1, 1)?;
        let table = check_partitions(&head, &last, sectors)?;
        if opts.firmware == Firmware::Uefi
            && matches!(table, PartitionTable::Mbr { esp: false, .. })
        {
            return Err(refused(
                "UEFI boots a disk with GPT or an EFI system partition; this disk has an MBR \
                 without one: import it with --firmware bios",
            ));
        }
        let size = std::fs::metadata(&disk).map_err(io_err(&disk))?.len();
        let sha256 = debs::sha256_file(&disk).map_err(|e| ImportError::Tool(e.to_string()))?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: opts.name.clone(),
            kind: "imported".into(),
            version: opts.version.clone(),
            created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            builder: format!(
                "atrium-node {}, import {IMPORTER_VERSION}",
                env!("CARGO_PKG_VERSION")
            ),
            content_key: source_sha256[..16].to_owned(),
            boot: Boot::Firmware(FirmwareSpec {
                firmware: opts.firmware,
                secure_boot: opts.secure_boot,
                tpm: opts.tpm,
            }),
            disk: Some(DiskSpec {
                file: "disk.qcow2".into(),
                format: DiskFormat::Qcow2,
                size_mib: info.virtual_size.div_ceil(1 << 20),
                purpose: "root".into(),
            }),
            home_disk: None,
            min_memory_mib: opts.min_memory_mib,
            agent: None,
            imported: Some(ImportRecord {
                source_name,
                source_format: format.qemu_name().into(),
                source_sha256,
                agent: opts.agent,
            }),
            modules: Vec::new(),
            packages: Vec::new(),
            files: vec![FileRecord { path: "disk.qcow2".into(), size, sha256 }],
        };
        manifest.validate().map_err(refused)?;
        read_only(&disk)?;
        let mpath = work.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
        std::fs::write(&mpath, json).map_err(io_err(&mpath))?;
        read_only(&mpath)?;
        // Checked as a node loads it (sizes, the manifest), not hashed a third time.
        Image::load(&work, false).map_err(|e| ImportError::Tool(e.to_string()))?;
        std::fs::rename(&work, &opts.out).map_err(io_err(&opts.out))?;
        Image::load(&opts.out, false).map_err(|e| ImportError::Tool(e.to_string()))
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&work);
        if made_parent {
            // Only if empty: the image's name folder made for this version.
            let _ = std::fs::remove_dir(parent);
        }
    }
    made
}

/// The first 512 bytes of a file and its last 512.
fn ends_of(path: &Path, len: u64) -> Result<(Vec<u8>, Vec<u8>), ImportError> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut head = Vec::new();
    (&mut f).take(SECTOR).read_to_end(&mut head).map_err(io_err(path))?;
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(len.saturating_sub(SECTOR))).map_err(io_err(path))?;
    f.take(SECTOR).read_to_end(&mut tail).map_err(io_err(path))?;
    Ok((head, tail))
}

/// `qemu-img` reading a file nobody checked yet (`info`, `check`): held to 2 GiB of address
/// space and 120 s of CPU, so a crafted file cannot make it take the host's memory or spin for
/// ever on its metadata. The conversion, once those passed, reads the whole disk with as many
/// threads as QEMU takes: no limits.
fn limited(qemu_img: &Path, whole_disk: bool) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(qemu_img);
    if whole_disk {
        return cmd;
    }
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            for (resource, limit) in [(libc::RLIMIT_AS, 2 << 30), (libc::RLIMIT_CPU, 120)] {
                let l = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                if libc::setrlimit(resource, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// `qemu-img check`: exit 0 is clean, 3 is leaked clusters only (harmless: space, not data).
fn check_metadata(qemu_img: &Path, format: SourceFormat, source: &Path) -> Result<(), ImportError> {
    let out = limited(qemu_img, false)
        .args(["check", "-f", format.qemu_name()])
        .arg(source)
        .output()
        .map_err(io_err(qemu_img))?;
    match out.status.code() {
        Some(0 | 3) => Ok(()),
        _ => Err(refused(format!(
            "the {} file is damaged: {}",
            format.qemu_name(),
            tool_message(&out)
        ))),
    }
}

/// Runs `qemu-img ARGS... FILE` and gives its standard output; a failure says what qemu-img said.
fn qemu_img(qemu_img: &Path, args: &[&str], file: &Path) -> Result<String, ImportError> {
    let out = limited(qemu_img, false).args(args).arg(file).output().map_err(io_err(qemu_img))?;
    if !out.status.success() {
        return Err(refused(format!(
            "qemu-img {} refused the file: {}",
            args[0],
            tool_message(&out)
        )));
    }
    String::from_utf8(out.stdout).map_err(|_| ImportError::Tool("qemu-img said non-UTF-8".into()))
}

fn qemu_img_status(qemu_img: &Path, args: &[&str], files: &[&Path]) -> Result<(), ImportError> {
    let out = limited(qemu_img, true).args(args).args(files).output().map_err(io_err(qemu_img))?;
    if !out.status.success() {
        let why = format!("qemu-img {} failed: {}", args[0], tool_message(&out));
        // A full disk is the host's fault, not the file's: the same file may pass later.
        if why.contains("No space left on device") {
            return Err(ImportError::Tool(why));
        }
        return Err(refused(why));
    }
    Ok(())
}

/// The first line of what a tool wrote to stderr (its error), else of its output, or its exit
/// status.
fn tool_message(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    err.lines()
        .chain(stdout.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map_or_else(|| out.status.to_string(), |l| l.chars().take(300).collect())
}

/// Sectors `first..first+count` of a qcow2 disk as the guest sees them. (`qemu-img dd` ends
/// its copy at `count` blocks from the disk's start, not from `skip`: so it is given the end.)
fn read_sectors(
    qemu_img: &Path,
    disk: &Path,
    work: &Path,
    first: u64,
    count: u64,
) -> Result<Vec<u8>, ImportError> {
    let out = work.join("sectors");
    let _ = std::fs::remove_file(&out);
    let mut input = std::ffi::OsString::from("if=");
    input.push(disk);
    let mut output = std::ffi::OsString::from("of=");
    output.push(&out);
    let st = Command::new(qemu_img)
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=512"])
        .arg(format!("skip={first}"))
        .arg(format!("count={}", first + count))
        .arg(input)
        .arg(output)
        .output()
        .map_err(io_err(qemu_img))?;
    if !st.status.success() {
        return Err(ImportError::Tool(format!("qemu-img dd: {}", tool_message(&st))));
    }
    let bytes = std::fs::read(&out).map_err(io_err(&out))?;
    std::fs::remove_file(&out).map_err(io_err(&out))?;
    if bytes.len() as u64 != count * SECTOR {
        return Err(ImportError::Tool(format!(
            "qemu-img dd gave {} bytes for {count} sectors at sector {first}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn read_only(path: &Path) -> Result<(), ImportError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk of `sectors` with a protective MBR and GPT headers at both ends (no entries).
    pub fn gpt_disk(sectors: u64) -> Vec<u8> {
        let mut d = vec![0u8; usize::try_from(sectors * SECTOR).expect("small")];
        d[446 + 4] = 0xee;
        d[510] = 0x55;
        d[511] = 0xaa;
        let header = |lba: u64, alternate: u64| {
            let mut h = vec![0u8; SECTOR_BYTES];
            h[..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&lba.to_le_bytes());
            h[32..40].copy_from_slice(&alternate.to_le_bytes());
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            let crc = crc32fast::hash(&h[..92]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        let s = SECTOR_BYTES;
        d[s..2 * s].copy_from_slice(&header(1, sectors - 1));
        let last = usize::try_from(sectors - 1).expect("small") * s;
        d[last..].copy_from_slice(&header(sectors - 1, 1));
        d
    }

    fn ends(d: &[u8]) -> (&[u8], &[u8]) {
        (&d[..34 * SECTOR_BYTES], &d[d.len() - SECTOR_BYTES..])
    }

    #[test]
    fn formats_are_told_by_their_first_bytes() {
        assert_eq!(detect_format(b"QFI\xfb\0\0\0\x03", b"").unwrap(), SourceFormat::Qcow2);
        assert_eq!(detect_format(b"KDMV\x01", b"").unwrap(), SourceFormat::Vmdk);
        assert_eq!(detect_format(b"vhdxfile", b"").unwrap(), SourceFormat::Vhdx);
        assert_eq!(detect_format(&[0u8; 512], &[0u8; 512]).unwrap(), SourceFormat::Raw);
        let err = detect_format(b"# Disk DescriptorFile\nversion=1", b"").unwrap_err();
        assert!(err.to_string().contains("descriptor"), "{err}");
        assert!(
            detect_format(&[0u8; 512], b"conectix\0\0").unwrap_err().to_string().contains("VHD")
        );
    }

    #[test]
    fn qemu_img_info_is_read_and_other_files_refused() {
        let ok = parse_info(r#"{"virtual-size": 67108864, "format": "qcow2"}"#, Path::new("/d"))
            .unwrap();
        assert_eq!(ok.virtual_size, 64 << 20);
        let backed = r#"{"virtual-size": 67108864, "backing-filename": "/etc/shadow"}"#;
        assert!(
            parse_info(backed, Path::new("/d")).unwrap_err().to_string().contains("backing file")
        );
        let data =
            r#"{"virtual-size": 67108864, "format-specific": {"data": {"data-file": "/x"}}}"#;
        assert!(
            parse_info(data, Path::new("/d")).unwrap_err().to_string().contains("another file")
        );
        assert!(parse_info(r#"{"virtual-size": 1000}"#, Path::new("/d")).is_err());
        assert!(parse_info(r#"{"virtual-size": 9007199254740992}"#, Path::new("/d")).is_err());
        assert!(matches!(parse_info("nope", Path::new("/d")), Err(ImportError::Tool(_))));
        // A VMDK's extents must be the file itself: a descriptor inside it may name others.
        let vmdk = |extents: &str| {
            format!(
                r#"{{"virtual-size": 67108864, "format": "vmdk",
                     "format-specific": {{"type": "vmdk", "data": {{"extents": {extents}}}}}}}"#
            )
        };
        let own = vmdk(r#"[{"filename": "/srv/win.vmdk"}]"#);
        assert!(parse_info(&own, Path::new("/srv/win.vmdk")).is_ok());
        for other in [
            r#"[{"filename": "/etc/shadow"}]"#,
            r#"[{"filename": "/srv/win.vmdk"}, {"filename": "/dev/sda"}]"#,
            "[]",
        ] {
            let err = parse_info(&vmdk(other), Path::new("/srv/win.vmdk")).unwrap_err();
            assert!(err.to_string().contains("other files"), "{other}: {err}");
        }
        assert!(parse_info(&vmdk("null"), Path::new("/srv/win.vmdk")).is_err());
    }

    #[test]
    fn a_whole_gpt_disk_passes_and_a_cut_one_does_not() {
        let d = gpt_disk(2048);
        let (head, last) = ends(&d);
        assert_eq!(
            check_partitions(head, last, 2048).unwrap(),
            PartitionTable::Gpt { partitions: 128 }
        );
        // Cut short: the backup header is gone, and the disk is shorter than the GPT says.
        let cut = &d[..1024 * SECTOR_BYTES];
        let (head, last) = ends(cut);
        let err = check_partitions(head, last, 1024).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        // The same size, its last sector zeroed (a copy that stopped early, padded).
        let mut zeroed = d.clone();
        let n = zeroed.len();
        zeroed[n - SECTOR_BYTES..].fill(0);
        let (head, last) = ends(&zeroed);
        assert!(check_partitions(head, last, 2048).unwrap_err().to_string().contains("backup"));
        // A flipped bit in the primary header.
        let mut flipped = d;
        flipped[SECTOR_BYTES + 40] ^= 1;
        let (head, last) = ends(&flipped);
        assert!(check_partitions(head, last, 2048).unwrap_err().to_string().contains("CRC"));
    }

    #[test]
    fn mbr_partitions_must_lie_within_the_disk() {
        let mut d = vec![0u8; 64 * SECTOR_BYTES];
        let (head, last) = ends(&d);
        assert!(check_partitions(head, last, 64).unwrap_err().to_string().contains("no partition"));
        d[510] = 0x55;
        d[511] = 0xaa;
        let (head, last) = ends(&d);
        assert!(check_partitions(head, last, 64).unwrap_err().to_string().contains("empty"));
        d[446 + 4] = 0x83;
        d[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        let (head, last) = ends(&d);
        assert!(check_partitions(head, last, 64).unwrap_err().to_string().contains("beyond"));
        d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&63u32.to_le_bytes());
        d[446 + 16 + 4] = 0xef;
        d[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[446 + 16 + 12..446 + 16 + 16].copy_from_slice(&8u32.to_le_bytes());
        let (head, last) = ends(&d);
        assert_eq!(
            check_partitions(head, last, 64).unwrap(),
            PartitionTable::Mbr { partitions: 2, esp: true }
        );
    }
}
