//! Multi-factor authentication: TOTP codes ([`totp`]) as the second factor, their secrets
//! sealed at rest ([`vault`]), and one-time recovery codes for a lost phone. Policy (the Cedar
//! action `require_mfa`) decides who must pass it: at sign-in, or before connecting to a pool.

pub mod totp;
pub mod vault;

use base64::Engine;
use sha2::{Digest, Sha256};

pub use vault::Vault;

/// Recovery codes made at enrolment.
pub const RECOVERY_CODES: usize = 10;
/// Letters and digits no one confuses (no 0/o, 1/l/i).
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
/// Characters of a recovery code (about 50 bits), written as two groups of five.
const CODE_LEN: usize = 10;

/// Ten fresh recovery codes, as the user is shown them (`abcde-fghjk`).
pub fn recovery_codes() -> Vec<String> {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    (0..RECOVERY_CODES)
        .map(|_| {
            let s: String = (0..CODE_LEN)
                .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
                .collect();
            format!("{}-{}", &s[..5], &s[5..])
        })
        .collect()
}

/// What is stored of a recovery code: the SHA-256 of its normalised form (any case, dashes
/// and spaces ignored); `None` when the text cannot be a recovery code.
pub fn recovery_hash(code: &str) -> Option<String> {
    let norm: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if norm.len() != CODE_LEN || !norm.bytes().all(|b| ALPHABET.contains(&b)) {
        return None;
    }
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(norm.as_bytes())))
}

/// `text` (an `otpauth://` URI) as a QR code, an SVG image; empty when it cannot be one (the
/// secret as text still works).
pub fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_unique_and_typed_loosely() {
        let codes = recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let hashes: std::collections::HashSet<_> =
            codes.iter().map(|c| recovery_hash(c).unwrap()).collect();
        assert_eq!(hashes.len(), RECOVERY_CODES);
        let c = &codes[0];
        let loose = format!(" {} ", c.to_uppercase().replace('-', " "));
        assert_eq!(recovery_hash(&loose), recovery_hash(c));
        for bad in ["", "abcde", "abcde-fghjk-x", "abcde-fghj0", "ÄÄÄÄÄ-ÄÄÄÄÄ"] {
            assert_eq!(recovery_hash(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_qr_code_is_an_svg_image() {
        let svg = qr_svg(
            "otpauth://totp/Atrium:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Atrium",
        );
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
        assert!(!svg.contains("<script"));
        assert_eq!(qr_svg(&"x".repeat(10_000)), "", "too long for a QR code");
    }
}
