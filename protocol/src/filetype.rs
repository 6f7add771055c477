//! What kind of file a file is, by its first bytes and its name together: the kinds policy may
//! allow to cross (`@file_types("pdf, image")`). The content decides (a program renamed
//! `report.pdf` is a program); a name that runs when opened (`.exe`, `.ps1`, `.bat`, ...)
//! makes any content a program too, since a script is text.

/// How many first bytes [`sniff`] looks at (or all of a smaller file).
pub const SNIFF_BYTES: usize = 8192;

/// A kind of file policy can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 or UTF-16 text with no NUL bytes (CSV, code, SVG, ...), or an empty file.
    Text,
    Pdf,
    /// PNG, JPEG, GIF, WebP, TIFF, BMP.
    Image,
    /// Office Open XML (docx, xlsx, pptx, ...), OpenDocument, and the older binary Office files.
    Office,
    /// zip, gzip, bzip2, xz, zstd, 7z, rar, tar.
    Archive,
    /// Windows, Linux and macOS programs and libraries, Java archives, installers, scripts.
    Program,
    /// Anything else.
    Other,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Text,
        Kind::Pdf,
        Kind::Image,
        Kind::Office,
        Kind::Archive,
        Kind::Program,
        Kind::Other,
    ];

    /// The name policy uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Pdf => "pdf",
            Self::Image => "image",
            Self::Office => "office",
            Self::Archive => "archive",
            Self::Program => "program",
            Self::Other => "other",
        }
    }

    /// What a user is told a file of this kind is.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Text => "a text file",
            Self::Pdf => "a PDF document",
            Self::Image => "an image",
            Self::Office => "an office document",
            Self::Archive => "an archive",
            Self::Program => "a program or script",
            Self::Other => "a file of an unknown kind",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Text => "text files",
            Self::Pdf => "PDF documents",
            Self::Image => "images",
            Self::Office => "office documents",
            Self::Archive => "archives",
            Self::Program => "programs",
            Self::Other => "other files",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// This kind in a set of kinds ([`Kinds`]).
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of kinds as bits ([`Kind::bit`]); 0 means every kind.
pub type Kinds = u32;

/// The set that allows no kind (policies whose kinds have nothing in common).
pub const NO_KIND: Kinds = 1 << 31;

/// Whether `kinds` allows `kind`.
pub fn allows(kinds: Kinds, kind: Kind) -> bool {
    kinds == 0 || kinds & kind.bit() != 0
}

/// `"pdf, image"` as a set of kinds; an unknown name is an error naming the known ones.
pub fn parse_kinds(list: &str) -> Result<Kinds, String> {
    let mut kinds = 0;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let k = Kind::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("{name:?} is not a kind of file (known: {})", known.join(", "))
        })?;
        kinds |= k.bit();
    }
    if kinds == 0 {
        return Err("names no kind of file".into());
    }
    Ok(kinds)
}

/// The kinds of a set, for a user: "PDF documents and images".
pub fn describe_kinds(kinds: Kinds) -> String {
    let names: Vec<&str> =
        Kind::ALL.into_iter().filter(|k| allows(kinds, *k)).map(Kind::plural).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Extensions of files that run when opened: programs, installers, libraries, scripts.
const PROGRAM_EXTENSIONS: &[&str] = &[
    "exe", "dll", "com", "scr", "sys", "cpl", "msi", "msp", "msix", "appx", "bat", "cmd", "ps1",
    "psm1", "psd1", "vbs", "vbe", "js", "jse", "wsf", "wsh", "hta", "lnk", "reg", "jar", "app",
    "apk", "deb", "rpm", "appimage", "run", "sh", "bash", "zsh", "csh", "ksh", "command", "elf",
    "so", "dylib", "pkg", "dmg", "iso", "img", "vhd", "vhdx",
];

/// Extensions of the older binary Office files (OLE compound files, which installers are too).
const OLE_OFFICE_EXTENSIONS: &[&str] =
    &["doc", "dot", "xls", "xlt", "ppt", "pot", "pps", "msg", "vsd", "pub"];

fn extension(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// The kind of file `name` whose first bytes are `head` ([`SNIFF_BYTES`] of them, or the whole
/// file when `whole`).
pub fn sniff(name: &str, head: &[u8], whole: bool) -> Kind {
    let ext = extension(name);
    if PROGRAM_EXTENSIONS.contains(&ext.as_str()) {
        return Kind::Program;
    }
    let starts = |magic: &[u8]| head.starts_with(magic);
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if starts(b"MZ")
        || starts(b"\x7fELF")
        || starts(b"#!")
        || [&b"\xfe\xed\xfa\xce"[..], b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe"]
            .iter()
            .any(|m| starts(m))
        || starts(b"\xca\xfe\xba\xbe")
        || starts(b"dex\n")
    {
        return Kind::Program;
    }
    if head[..head.len().min(1024)].windows(5).any(|w| w == b"%PDF-") {
        return Kind::Pdf;
    }
    if starts(b"\x89PNG\r\n\x1a\n")
        || starts(b"\xff\xd8\xff")
        || starts(b"GIF87a")
        || starts(b"GIF89a")
        || (starts(b"RIFF") && at(8, b"WEBP"))
        || starts(b"II*\0")
        || starts(b"MM\0*")
        || (starts(b"BM") && head.len() >= 26 && at(6, b"\0\0\0\0"))
    {
        return Kind::Image;
    }
    if starts(b"PK\x03\x04") {
        return zip_kind(head);
    }
    if starts(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1") {
        return if OLE_OFFICE_EXTENSIONS.contains(&ext.as_str()) {
            Kind::Office
        } else if ext == "msi" {
            Kind::Program
        } else {
            Kind::Other
        };
    }
    if starts(b"\x1f\x8b")
        || starts(b"BZh")
        || starts(b"\xfd7zXZ\0")
        || starts(b"\x28\xb5\x2f\xfd")
        || starts(b"7z\xbc\xaf\x27\x1c")
        || starts(b"Rar!\x1a\x07")
        || at(257, b"ustar")
    {
        return Kind::Archive;
    }
    if is_text(head, whole) {
        return Kind::Text;
    }
    Kind::Other
}

/// A zip file: an office document when its first entry says so, else an archive.
fn zip_kind(head: &[u8]) -> Kind {
    let u16_at =
        |o: usize| head.get(o..o + 2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let (Some(name_len), Some(extra_len)) = (u16_at(26), u16_at(28)) else { return Kind::Archive };
    let Some(first) = head.get(30..30 + name_len) else { return Kind::Archive };
    let office_parts: [&[u8]; 6] =
        [b"[Content_Types].xml", b"_rels/", b"docProps/", b"word/", b"xl/", b"ppt/"];
    if office_parts.iter().any(|p| first.starts_with(p)) {
        return Kind::Office;
    }
    // OpenDocument: a first entry `mimetype`, stored, holding the document's type.
    let data = 30 + name_len + extra_len;
    if first == b"mimetype"
        && head.get(data..).is_some_and(|d| d.starts_with(b"application/vnd.oasis.opendocument"))
    {
        return Kind::Office;
    }
    Kind::Archive
}

/// Text: UTF-16 with its byte-order mark, or UTF-8 (a character cut at the end of a head
/// allowed) with no NUL and few control characters.
fn is_text(head: &[u8], whole: bool) -> bool {
    if head.starts_with(b"\xff\xfe") || head.starts_with(b"\xfe\xff") {
        return head.len().is_multiple_of(2) || !whole;
    }
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        // Only an incomplete last character, where the head was cut.
        Err(e) => !whole && e.error_len().is_none(),
    };
    let controls = head
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c | 0x1b))
        .count();
    valid && !head.contains(&0) && controls * 100 <= head.len()
}

/// Widest or highest image [`png_size`] believes, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Most pixels of an image [`png_size`] believes (an 8K screen's 7680x4320 fits): a small file
/// must not decode into gigabytes where it is shown.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 25;

/// A PNG file's size in pixels, from its signature and header chunk (`IHDR`), or why `data`
/// is not a PNG file an image viewer would open: the clipboard's images are checked with it
/// before they cross.
pub fn png_size(data: &[u8]) -> Result<(u32, u32), String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let header = data.get(..33).ok_or("too short for a PNG image")?;
    if &header[..8] != SIGNATURE {
        return Err("not a PNG image".into());
    }
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if word(8) != 13 || &header[12..16] != b"IHDR" {
        return Err("a PNG image must start with its header (IHDR)".into());
    }
    let (width, height) = (word(16), word(20));
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(format!(
            "a PNG image of {width}x{height} pixels: each side must be 1 to {MAX_IMAGE_SIDE}"
        ));
    }
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(format!(
            "a PNG image of {width}x{height} pixels: at most {MAX_IMAGE_PIXELS} pixels"
        ));
    }
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_with_first(entry: &str, data: &[u8]) -> Vec<u8> {
        let mut z = b"PK\x03\x04".to_vec();
        z.extend_from_slice(&[0; 22]);
        z.extend_from_slice(&u16::try_from(entry.len()).unwrap().to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        z.extend_from_slice(entry.as_bytes());
        z.extend_from_slice(data);
        z
    }

    #[test]
    fn content_decides_and_a_program_name_makes_a_program() {
        let cases: &[(&str, &[u8], Kind)] = &[
            ("notes.txt", b"hello\nworld\n", Kind::Text),
            ("empty", b"", Kind::Text),
            ("data.csv", "na\u{ef}ve,1\n".as_bytes(), Kind::Text),
            ("report.pdf", b"%PDF-1.7\n%\xe2\xe3", Kind::Pdf),
            ("photo.jpg", b"\xff\xd8\xff\xe0\0\x10JFIF", Kind::Image),
            ("shot.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", Kind::Image),
            ("report.pdf", b"MZ\x90\0\x03\0\0\0", Kind::Program),
            ("tool", b"\x7fELF\x02\x01\x01", Kind::Program),
            ("run.txt", b"#!/bin/sh\nrm -rf ~\n", Kind::Program),
            ("clean.ps1", b"Write-Host hi\n", Kind::Program),
            ("SETUP.EXE", b"just text", Kind::Program),
            ("a.gz", b"\x1f\x8b\x08\0", Kind::Archive),
            ("blob.bin", b"\0\x01\x02\x03\xff\xfe\x00", Kind::Other),
            ("old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\0\0", Kind::Office),
            ("setup.msi", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\0\0", Kind::Program),
            ("renamed.doc.x", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\0\0", Kind::Other),
        ];
        for (name, head, want) in cases {
            assert_eq!(sniff(name, head, true), *want, "{name}");
        }
        let docx = zip_with_first("[Content_Types].xml", b"<?xml");
        assert_eq!(sniff("q3.docx", &docx, false), Kind::Office);
        let odt = zip_with_first("mimetype", b"application/vnd.oasis.opendocument.text");
        assert_eq!(sniff("q3.odt", &odt, false), Kind::Office);
        assert_eq!(sniff("q3.docx", &zip_with_first("evil.exe", b"MZ"), false), Kind::Archive);
        let mut tar = vec![b'a'; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(sniff("x.tar", &tar, true), Kind::Archive);
    }

    #[test]
    fn text_cut_in_a_character_is_still_text_unless_the_file_ends_there() {
        let s = "Grüße".as_bytes();
        let cut = &s[..s.len() - 1];
        assert_eq!(sniff("a", &s[..3], false), Kind::Text);
        assert_eq!(sniff("a", &s[..3], true), Kind::Other);
        assert_eq!(sniff("a", cut, false), Kind::Text);
    }

    #[test]
    fn kinds_parse_and_read_well() {
        let k = parse_kinds("pdf, image").unwrap();
        assert!(allows(k, Kind::Pdf) && allows(k, Kind::Image) && !allows(k, Kind::Program));
        assert!(allows(0, Kind::Program), "no set: every kind");
        assert_eq!(describe_kinds(k), "PDF documents and images");
        assert_eq!(describe_kinds(Kind::Text.bit()), "text files");
        assert!(parse_kinds("pdf, movies").unwrap_err().contains("known: text, pdf"));
        assert!(parse_kinds(" , ").is_err());
    }

    /// A PNG file's first 33 bytes: signature and header chunk.
    fn png_head(width: u32, height: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        v.extend(width.to_be_bytes());
        v.extend(height.to_be_bytes());
        v.extend([8, 6, 0, 0, 0, 1, 2, 3, 4]);
        v
    }

    #[test]
    fn png_images_are_told_by_their_header() {
        assert_eq!(png_size(&png_head(640, 480)), Ok((640, 480)));
        assert!(png_size(b"GIF89a").is_err());
        assert!(png_size(&png_head(640, 480)[..32]).is_err(), "cut in its header");
        assert!(png_size(&png_head(0, 480)).is_err());
        assert!(png_size(&png_head(MAX_IMAGE_SIDE + 1, 1)).is_err());
        assert_eq!(png_size(&png_head(7680, 4320)), Ok((7680, 4320)));
        assert!(png_size(&png_head(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)).is_err(), "too many pixels");
        let mut not_ihdr = png_head(1, 1);
        not_ihdr[12..16].copy_from_slice(b"IDAT");
        assert!(png_size(&not_ihdr).unwrap_err().contains("IHDR"));
    }
}
