//! The X server's access cookie, from an Xauthority file (as `xauth` writes it).
//!
//! The file is a list of entries, each: family (u16), address, display number, authorization
//! name, authorization data, every string a big-endian u16 length then the bytes.

/// One entry of an Xauthority file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XauthEntry {
    pub family: u16,
    pub address: Vec<u8>,
    pub display: String,
    pub name: Vec<u8>,
    pub data: Vec<u8>,
}

/// `FamilyWild`: an entry for any host.
pub const FAMILY_WILD: u16 = 0xffff;
/// `FamilyLocal`: an entry for this host's unix sockets.
pub const FAMILY_LOCAL: u16 = 256;

/// Parses a whole file; `None` when it is truncated.
pub fn parse(mut b: &[u8]) -> Option<Vec<XauthEntry>> {
    fn field<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
        let value = b.get(2..2 + len)?;
        *b = &b[2 + len..];
        Some(value)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let family = u16::from_be_bytes([*b.first()?, *b.get(1)?]);
        b = &b[2..];
        let address = field(&mut b)?.to_vec();
        let display = String::from_utf8_lossy(field(&mut b)?).into_owned();
        let name = field(&mut b)?.to_vec();
        let data = field(&mut b)?.to_vec();
        out.push(XauthEntry { family, address, display, name, data });
    }
    Some(out)
}

/// The cookie for local display `display` (any host name: the file is this guest's own).
pub fn cookie_for(entries: &[XauthEntry], display: u32) -> Option<(Vec<u8>, Vec<u8>)> {
    let display = display.to_string();
    entries
        .iter()
        .find(|e| {
            (e.family == FAMILY_LOCAL || e.family == FAMILY_WILD)
                && (e.display.is_empty() || e.display == display)
                && e.name == b"MIT-MAGIC-COOKIE-1"
        })
        .map(|e| (e.name.clone(), e.data.clone()))
}

/// An Xauthority file of one entry for local display `display` on any host name (`FamilyWild`):
/// a clone takes a new host name after its X server wrote its cookie under the old one.
pub fn wild_file(display: u32, name: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let mut v = FAMILY_WILD.to_be_bytes().to_vec();
    let number = display.to_string();
    for f in [&b""[..], number.as_bytes(), name, data] {
        v.extend_from_slice(&u16::try_from(f.len()).ok()?.to_be_bytes());
        v.extend_from_slice(f);
    }
    Some(v)
}

/// The display number of a name like `:0` or `:1.0`.
pub fn display_number(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(':')?;
    rest.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(family: u16, address: &[u8], display: &str, name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut v = family.to_be_bytes().to_vec();
        for f in [address, display.as_bytes(), name, data] {
            v.extend_from_slice(&u16::try_from(f.len()).expect("short").to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    #[test]
    fn a_wild_file_holds_the_cookie_for_any_host() {
        let file = wild_file(0, b"MIT-MAGIC-COOKIE-1", &[7; 16]).expect("short fields");
        let entries = parse(&file).expect("parses");
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].family, entries[0].address.as_slice()), (FAMILY_WILD, &b""[..]));
        assert_eq!(cookie_for(&entries, 0), Some((b"MIT-MAGIC-COOKIE-1".to_vec(), vec![7; 16])));
        assert_eq!(cookie_for(&entries, 1), None);
        assert!(wild_file(0, b"x", &vec![0; 70_000]).is_none());
    }

    #[test]
    fn finds_the_local_cookie() {
        let mut file = entry(0, b"\x7f\0\0\x01", "0", b"MIT-MAGIC-COOKIE-1", b"tcp");
        file.extend(entry(FAMILY_LOCAL, b"atrium", "1", b"MIT-MAGIC-COOKIE-1", b"other"));
        file.extend(entry(FAMILY_LOCAL, b"atrium", "0", b"MIT-MAGIC-COOKIE-1", &[7; 16]));
        let entries = parse(&file).expect("valid");
        assert_eq!(entries.len(), 3);
        let (name, data) = cookie_for(&entries, 0).expect("cookie");
        assert_eq!(
            (name.as_slice(), data.as_slice()),
            (&b"MIT-MAGIC-COOKIE-1"[..], &[7u8; 16][..])
        );
        assert_eq!(cookie_for(&entries, 2), None);
        assert_eq!(parse(&file[..file.len() - 1]), None, "truncated");
        assert_eq!(parse(&[]), Some(vec![]));
    }

    #[test]
    fn display_numbers() {
        assert_eq!(display_number(":0"), Some(0));
        assert_eq!(display_number(":12.1"), Some(12));
        assert_eq!(display_number("host:0"), None);
        assert_eq!(display_number(":x"), None);
    }
}
