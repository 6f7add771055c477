//! Time-based one-time passwords (RFC 6238 over RFC 4226): HMAC-SHA1, 6 digits, 30-second
//! steps, what every authenticator app reads from an `otpauth://` URI.

use ring::hmac;

/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Steps before and after now that are accepted (a phone's clock a little off, a code typed as
/// it changes).
pub const WINDOW: u64 = 1;
/// Bytes of a secret (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;

/// A fresh random secret.
pub fn new_secret() -> [u8; SECRET_LEN] {
    let mut s = [0u8; SECRET_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
    s
}

/// The code of `step` (RFC 4226, 5.3: dynamic truncation).
pub fn code_at(secret: &[u8], step: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &step.to_be_bytes());
    let d = mac.as_ref();
    let off = usize::from(d[d.len() - 1] & 0x0f);
    let bin = (u32::from(d[off]) & 0x7f) << 24
        | u32::from(d[off + 1]) << 16
        | u32::from(d[off + 2]) << 8
        | u32::from(d[off + 3]);
    bin % 10u32.pow(DIGITS)
}

/// The step a typed code matches around `now_secs`, if any, and only if it is later than
/// `after` (a code used once, or an older one, is refused: no replay).
pub fn verify(secret: &[u8], typed: &str, now_secs: u64, after: u64) -> Option<u64> {
    let digits: String = typed.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() != DIGITS as usize || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = digits.parse().ok()?;
    let now = now_secs / STEP_SECS;
    let mut found = None;
    // Every candidate is computed, so the time taken says nothing about which matched.
    for step in now.saturating_sub(WINDOW)..=now + WINDOW {
        let ok = crate::secret::constant_time_eq(
            code_at(secret, step).to_be_bytes().as_slice(),
            want.to_be_bytes().as_slice(),
        );
        if ok && step > after && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// The secret as authenticator apps take it typed: base32 without padding.
pub fn base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The `otpauth://` URI of a secret (the Key URI Format authenticator apps read from a QR
/// code).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| {
        form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, appendix B (SHA1), the last six digits of each eight-digit value.
    #[test]
    fn the_rfc_test_vectors() {
        let secret = b"12345678901234567890";
        for (t, code) in [
            (59, 287_082),
            (1_111_111_109, 81_804),
            (1_111_111_111, 50_471),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
            (20_000_000_000, 353_130),
        ] {
            assert_eq!(code_at(secret, t / STEP_SECS), code, "T = {t}");
        }
    }

    #[test]
    fn codes_are_taken_once_and_only_near_now() {
        let s = new_secret();
        let now = 1_800_000_000;
        let step = now / STEP_SECS;
        let code = format!("{:06}", code_at(&s, step));
        assert_eq!(verify(&s, &code, now, 0), Some(step));
        // Replay: the same step (or an earlier one) once used is refused.
        assert_eq!(verify(&s, &code, now, step), None);
        // A code from the step before still works once; one from two steps back does not.
        let before = format!("{:06}", code_at(&s, step - 1));
        assert_eq!(verify(&s, &before, now, 0), Some(step - 1));
        let old = format!("{:06}", code_at(&s, step - 2));
        assert_eq!(verify(&s, &old, now, 0), None);
        // Spaces are ignored; anything else is refused.
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert_eq!(verify(&s, &spaced, now, 0), Some(step));
        for bad in ["", "12345", "1234567", "abcdef", "12345a", "١٢٣٤٥٦"] {
            assert_eq!(verify(&s, bad, now, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn the_uri_is_what_apps_read() {
        let uri = otpauth_uri("Atrium", "alice smith", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/Atrium:alice%20smith?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Atrium&algorithm=SHA1&digits=6&period=30"
        );
    }
}
