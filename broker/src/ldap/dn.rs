//! Distinguished names as text: a group's name from its DN, and whether a DN is under a base,
//! compared RDN by RDN with escapes undone.

/// The group name in a group DN: the value of its first RDN when that RDN's attribute is
/// `name_attr` (`cn=admins,ou=groups,...` gives `admins`); otherwise the whole DN.
pub fn group_name_from_dn(dn: &str, name_attr: &str) -> Option<String> {
    let first = split_first_rdn(dn)?;
    let (attr, value) = first.split_once('=')?;
    if attr.trim().eq_ignore_ascii_case(name_attr) {
        Some(unescape_dn_value(value.trim()))
    } else {
        Some(dn.to_owned())
    }
}

/// The RDNs of a DN in a comparable form, split at unescaped commas only (an escaped `\,`
/// is part of a value, not a separator): attribute and value trimmed, the value unescaped,
/// both lower case.
fn comparable_rdns(dn: &str) -> Vec<String> {
    let mut rdns = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    let mut push = |part: &str| {
        let (a, v) = part.split_once('=').unwrap_or((part, ""));
        let v = unescape_dn_value(v.trim());
        rdns.push(format!("{}={}", a.trim().to_lowercase(), v.to_lowercase()));
    };
    for (i, c) in dn.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            ',' if !escaped => {
                push(&dn[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
    }
    push(&dn[start..]);
    rdns
}

/// Whether `dn` is `base` or below it, comparing whole RDNs.
pub fn dn_is_under(dn: &str, base: &str) -> bool {
    let (dn, base) = (comparable_rdns(dn), comparable_rdns(base));
    dn.len() >= base.len() && dn[dn.len() - base.len()..] == base[..]
}

/// The first RDN of a DN, honouring backslash escapes.
fn split_first_rdn(dn: &str) -> Option<&str> {
    let mut escaped = false;
    for (i, c) in dn.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            ',' | '+' if !escaped => return Some(&dn[..i]),
            _ => escaped = false,
        }
    }
    if dn.is_empty() { None } else { Some(dn) }
}

fn unescape_dn_value(v: &str) -> String {
    let mut out = Vec::with_capacity(v.len());
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(byte) = hex {
                out.push(byte);
                i += 3;
            } else {
                out.push(b[i + 1]);
                i += 2;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_come_from_the_first_rdn() {
        assert_eq!(group_name_from_dn("cn=admins,ou=groups,dc=x", "cn").as_deref(), Some("admins"));
        assert_eq!(
            group_name_from_dn("CN=Domain Users,CN=Users,DC=corp", "cn").as_deref(),
            Some("Domain Users")
        );
        assert_eq!(group_name_from_dn("cn=a\\,b,ou=g", "cn").as_deref(), Some("a,b"));
        assert_eq!(group_name_from_dn("cn=caf\\c3\\a9,ou=g", "cn").as_deref(), Some("café"));
        assert_eq!(group_name_from_dn("ou=x,dc=y", "cn").as_deref(), Some("ou=x,dc=y"));
        assert_eq!(group_name_from_dn("", "cn"), None);
        assert_eq!(group_name_from_dn("garbage", "cn"), None);
    }

    #[test]
    fn groups_must_be_under_the_group_base() {
        let base = "ou=Groups, dc=example,dc=com";
        assert!(dn_is_under("cn=admins,ou=groups,dc=example,dc=com", base));
        assert!(dn_is_under("CN=Admins, OU=Groups, DC=Example, DC=Com", base));
        assert!(!dn_is_under("cn=admins,ou=mine,dc=example,dc=com", base));
        assert!(!dn_is_under("cn=admins,ou=xgroups,dc=example,dc=com", base));
        // An escaped comma is part of a value: this group is in an OU named
        // "x,ou=groups" under dc=example,dc=com, not under ou=groups.
        assert!(!dn_is_under(r"cn=atrium-admins,ou=x\,ou=groups,dc=example,dc=com", base));
        assert!(dn_is_under(r"cn=a\,b,ou=groups,dc=example,dc=com", base));
        // Escaped and plain spellings of the same value compare equal.
        assert!(dn_is_under(r"cn=x,ou=Gr\6fups,dc=example,dc=com", base));
        assert!(!dn_is_under("dc=com", base));
    }
}
