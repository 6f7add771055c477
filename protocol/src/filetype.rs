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

/// A PNG file's size in pixels, or why `data` is not a well-formed PNG file: the clipboard's
/// images are checked with it before they cross. Its structure is checked whole: the
/// signature, then chunks each within the file and with its CRC, the header (`IHDR`, with a
/// size within [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_PIXELS`] and a known pixel format) first,
/// a palette (`PLTE`) where the format needs one, the image data (`IDAT`) in one run, no
/// critical chunk a viewer does not know, and the end (`IEND`) last with nothing after it. The
/// compressed pixels themselves are the viewer's to decode.
pub fn png_size(data: &[u8]) -> Result<(u32, u32), String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if data.len() < 8 || &data[..8] != SIGNATURE {
        return Err("not a PNG image".into());
    }
    let mut at = 8;
    let mut size = None;
    let (mut color, mut palette, mut idat_runs, mut in_idat) = (0u8, false, 0u32, false);
    loop {
        let head = data.get(at..at + 8).ok_or("a PNG image cut short (no IEND chunk)")?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind: [u8; 4] = [head[4], head[5], head[6], head[7]];
        if len > 0x7fff_ffff || !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err("a PNG image with a malformed chunk".into());
        }
        let len = usize::try_from(len).map_err(|_| "a PNG chunk too long")?;
        let end = (at + 8).checked_add(len).ok_or("a PNG chunk too long")?;
        let body = data.get(at + 8..end).ok_or("a PNG image cut short in a chunk")?;
        let crc = data.get(end..end + 4).ok_or("a PNG image cut short in a chunk")?;
        if crc32(&[&kind, body]) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(format!(
                "a PNG chunk ({}) whose CRC is wrong",
                String::from_utf8_lossy(&kind)
            ));
        }
        at = end + 4;
        if size.is_none() && &kind != b"IHDR" {
            return Err("a PNG image must start with its header (IHDR)".into());
        }
        let idat = &kind == b"IDAT";
        if idat && !in_idat {
            idat_runs += 1;
        }
        in_idat = idat;
        match &kind {
            b"IHDR" if size.is_none() => {
                size = Some(png_header(body)?);
                color = body[9];
            }
            b"PLTE" if idat_runs == 0 && !palette => palette = true,
            b"IDAT" => {}
            b"IEND" if body.is_empty() => break,
            // A critical chunk (upper-case first letter) a viewer does not know, or one out of
            // its place; ancillary ones (lower-case) a viewer may skip.
            k if k[0].is_ascii_uppercase() => {
                return Err(format!(
                    "a PNG image with a {} chunk where none may be",
                    String::from_utf8_lossy(k)
                ));
            }
            _ => {}
        }
    }
    if at != data.len() {
        return Err("a PNG image with bytes after its end (IEND)".into());
    }
    if idat_runs != 1 {
        return Err("a PNG image's data (IDAT) must be one run of chunks".into());
    }
    // Indexed colour needs its palette; greyscale may not have one.
    if (color == 3 && !palette) || (matches!(color, 0 | 4) && palette) {
        return Err("a PNG image whose palette (PLTE) does not fit its colour type".into());
    }
    size.ok_or_else(|| "a PNG image without a header".into())
}

/// The size from a PNG header chunk's 13 bytes, checked: sides and pixels within the limits, a
/// colour type with one of its bit depths, the one compression and filter method, and no or
/// Adam7 interlacing.
fn png_header(h: &[u8]) -> Result<(u32, u32), String> {
    let [w0, w1, w2, w3, h0, h1, h2, h3, depth, color, compression, filter, interlace] = *h else {
        return Err("a PNG image whose header (IHDR) is not 13 bytes".into());
    };
    let (width, height) =
        (u32::from_be_bytes([w0, w1, w2, w3]), u32::from_be_bytes([h0, h1, h2, h3]));
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
    let depth_ok = match color {
        0 => matches!(depth, 1 | 2 | 4 | 8 | 16),
        3 => matches!(depth, 1 | 2 | 4 | 8),
        2 | 4 | 6 => matches!(depth, 8 | 16),
        _ => false,
    };
    if !depth_ok || compression != 0 || filter != 0 || interlace > 1 {
        return Err(format!(
            "a PNG image of an unknown format (colour type {color}, bit depth {depth})"
        ));
    }
    Ok((width, height))
}

/// CRC-32 (ISO-HDLC, as PNG and zlib use) of `parts` one after the other.
fn crc32(parts: &[&[u8]]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            #[allow(clippy::cast_possible_truncation)]
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = 0xffff_ffffu32;
    for b in parts.iter().flat_map(|p| p.iter()) {
        c = TABLE[usize::from(c.to_le_bytes()[0] ^ b)] ^ (c >> 8);
    }
    !c
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

    /// A PNG file's chunk: length, type, data, CRC.
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend(u32::try_from(data.len()).unwrap().to_be_bytes());
        out.extend(kind);
        out.extend(data);
        out.extend(crc32(&[kind, data]).to_be_bytes());
    }

    /// A PNG file of `width` x `height` (RGBA, 8 bits) with these chunks between header and
    /// end (its pixels are not real: the check does not decode them).
    fn png_with(width: u32, height: u32, middle: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = width.to_be_bytes().to_vec();
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([8, 6, 0, 0, 0]);
        chunk(&mut v, b"IHDR", &ihdr);
        for (k, d) in middle {
            chunk(&mut v, k, d);
        }
        chunk(&mut v, b"IEND", b"");
        v
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        png_with(width, height, &[(b"IDAT", b"\x78\x9c\x03\x00\x00\x00\x00\x01")])
    }

    #[test]
    fn crc32_is_the_standard_one() {
        assert_eq!(crc32(&[b"123456789"]), 0xcbf4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xcbf4_3926);
        assert_eq!(crc32(&[b"IEND"]), 0xae42_6082, "the end chunk every PNG file has");
    }

    #[test]
    fn png_images_are_checked_whole() {
        assert_eq!(png_size(&png(640, 480)), Ok((640, 480)));
        assert_eq!(png_size(&png(7680, 4320)), Ok((7680, 4320)));
        let idat: (&[u8; 4], &[u8]) = (b"IDAT", b"x");
        let text: (&[u8; 4], &[u8]) = (b"tEXt", b"Comment\0hi");
        assert_eq!(png_size(&png_with(2, 2, &[text, idat, idat, text])), Ok((2, 2)));
        for (bad, why) in [
            (b"GIF89a".to_vec(), "not a PNG"),
            (png(0, 480), "each side"),
            (png(MAX_IMAGE_SIDE + 1, 1), "each side"),
            (png(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), "at most"),
            (png(640, 480)[..40].to_vec(), "cut short"),
            ([png(2, 2), b"trailing".to_vec()].concat(), "after its end"),
            ([png(2, 2), png(2, 2)].concat(), "after its end"),
            (png_with(2, 2, &[]), "one run"),
            (png_with(2, 2, &[idat, text, idat]), "one run"),
            (png_with(2, 2, &[(b"ABCD", b""), idat]), "ABCD chunk"),
            (png_with(2, 2, &[idat, (b"IHDR", &[0; 13])]), "IHDR chunk"),
            (png_with(2, 2, &[(b"PLTE", &[0; 3]), idat]), "ok"),
            (png_with(2, 2, &[idat, (b"PLTE", &[0; 3])]), "PLTE chunk"),
            (png_with(2, 2, &[(b"t3Xt", b""), idat]), "malformed"),
        ] {
            match png_size(&bad) {
                Ok(_) => assert_eq!(why, "ok", "{bad:?} passed"),
                Err(e) => assert!(e.contains(why), "{e:?} wanted {why:?}"),
            }
        }
        let mut crc = png(2, 2);
        let n = crc.len();
        crc[n - 1] ^= 1;
        assert!(png_size(&crc).unwrap_err().contains("CRC"));
        let mut not_ihdr = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut not_ihdr, b"IDAT", b"x");
        chunk(&mut not_ihdr, b"IEND", b"");
        assert!(png_size(&not_ihdr).unwrap_err().contains("start with its header"));
        // The pixel format: known colour types with their depths, no palette for grey.
        let with_format = |depth: u8, color: u8, plte: bool| {
            let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
            chunk(&mut v, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, depth, color, 0, 0, 0]);
            if plte {
                chunk(&mut v, b"PLTE", &[0; 3]);
            }
            chunk(&mut v, b"IDAT", b"x");
            chunk(&mut v, b"IEND", b"");
            png_size(&v)
        };
        assert!(with_format(8, 2, false).is_ok() && with_format(1, 0, false).is_ok());
        assert!(with_format(4, 3, true).is_ok());
        assert!(with_format(4, 3, false).unwrap_err().contains("palette"));
        assert!(with_format(8, 0, true).unwrap_err().contains("palette"));
        assert!(with_format(4, 2, false).unwrap_err().contains("unknown format"));
        assert!(with_format(8, 5, false).unwrap_err().contains("unknown format"));
    }
}
