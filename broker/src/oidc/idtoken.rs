//! Checking an ID token: the algorithm pinned to what the provider publishes and Atrium
//! supports, the signature against the provider's keys, then issuer, audience (and `azp`),
//! expiry, issue time and nonce.

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::OidcError;

/// Clock difference tolerated between the provider and the broker.
pub const LEEWAY_SECS: u64 = 60;
/// Longest ID token accepted.
pub const MAX_ID_TOKEN: usize = 16 * 1024;

/// What an ID token must match besides its signature.
#[derive(Debug)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub now_secs: u64,
}

/// Why a token was refused before its signature could be checked against a key.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyLookup {
    /// The token names a key the set does not hold: the provider may have rotated its keys.
    Unknown,
}

/// The header's algorithm and key id, when the algorithm is one of `allowed`.
pub fn header(
    token: &str,
    allowed: &[Algorithm],
) -> Result<(Algorithm, Option<String>), OidcError> {
    if token.len() > MAX_ID_TOKEN {
        return Err(OidcError::Token("the ID token is too large".into()));
    }
    let h = jsonwebtoken::decode_header(token)
        .map_err(|_| OidcError::Token("the ID token is not a signed JWT".into()))?;
    if !allowed.contains(&h.alg) {
        return Err(OidcError::Token(format!(
            "the ID token is signed with {:?}, which is not accepted",
            h.alg
        )));
    }
    Ok((h.alg, h.kid))
}

/// The key of `set` that may have signed a token with `alg` and `kid`.
pub fn find_key<'a>(
    set: &'a JwkSet,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<&'a Jwk, KeyLookup> {
    let usable = |k: &&Jwk| {
        k.common.public_key_use.as_ref().is_none_or(|u| *u == PublicKeyUse::Signature)
            && k.common.key_algorithm.is_none_or(|a| key_alg_matches(a, alg))
    };
    match kid {
        Some(kid) => set
            .keys
            .iter()
            .filter(usable)
            .find(|k| k.common.key_id.as_deref() == Some(kid))
            .ok_or(KeyLookup::Unknown),
        // No key id: only when exactly one key could have signed it.
        None => {
            let mut it = set.keys.iter().filter(usable);
            match (it.next(), it.next()) {
                (Some(k), None) => Ok(k),
                _ => Err(KeyLookup::Unknown),
            }
        }
    }
}

fn key_alg_matches(a: KeyAlgorithm, alg: Algorithm) -> bool {
    format!("{a:?}") == format!("{alg:?}")
}

/// Verifies `token` with `key` and checks its claims; the claims on success.
pub fn verify(
    token: &str,
    key: &Jwk,
    alg: Algorithm,
    exp: &Expected<'_>,
) -> Result<Map<String, Value>, OidcError> {
    let decoding = DecodingKey::from_jwk(key)
        .map_err(|_| OidcError::Token("the provider's key cannot be used".into()))?;
    let mut v = Validation::new(alg);
    v.set_issuer(&[exp.issuer]);
    v.set_audience(&[exp.client_id]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    v.leeway = LEEWAY_SECS;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &decoding, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        OidcError::Token(
            match e.kind() {
                K::InvalidSignature => "the ID token's signature is not the provider's",
                K::ExpiredSignature => "the ID token has expired",
                K::InvalidAudience => "the ID token is for another client",
                K::InvalidIssuer => "the ID token is from another issuer",
                K::MissingRequiredClaim(_) => "the ID token lacks a required claim",
                K::ImmatureSignature => "the ID token is not valid yet",
                _ => "the ID token is malformed",
            }
            .into(),
        )
    })?;
    let claims = data.claims;
    // Several audiences: the authorized party must be this client; and whenever it is named,
    // it must be this client.
    let azp = claims.get("azp").and_then(Value::as_str);
    let several = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
    if (several && azp != Some(exp.client_id)) || azp.is_some_and(|a| a != exp.client_id) {
        return Err(OidcError::Token("the ID token is for another client (azp)".into()));
    }
    let iat = claims.get("iat").and_then(Value::as_u64).unwrap_or(u64::MAX);
    if iat > exp.now_secs + LEEWAY_SECS {
        return Err(OidcError::Token("the ID token was issued in the future".into()));
    }
    let nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !crate::secret::constant_time_eq(nonce.as_bytes(), exp.nonce.as_bytes()) {
        return Err(OidcError::Token("the ID token's nonce is not this sign-in's".into()));
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.len() <= 255 => {}
        _ => return Err(OidcError::Token("the ID token's subject is missing or too long".into())),
    }
    Ok(claims)
}

/// The algorithms accepted: those configured (or all Atrium supports) that the provider
/// publishes for ID tokens. Never `none` or HMAC.
pub fn accepted_algorithms(configured: &[String], published: &[String]) -> Vec<Algorithm> {
    let supported = crate::config::SUPPORTED_ALGORITHMS;
    published
        .iter()
        .filter(|a| supported.contains(&a.as_str()))
        .filter(|a| configured.is_empty() || configured.contains(a))
        .filter_map(|a| a.parse::<Algorithm>().ok())
        .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        .collect()
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    /// An Ed25519 key pair as a PKCS#8 PEM and a JWK with `kid`.
    fn key(kid: &str) -> (EncodingKey, Jwk) {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = sk.to_pkcs8_pem(Default::default()).unwrap();
        let enc = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
        let x = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            sk.verifying_key().as_bytes(),
        );
        let jwk: Jwk = serde_json::from_value(
            json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA" }),
        )
        .unwrap();
        (enc, jwk)
    }

    fn sign(enc: &EncodingKey, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, enc).unwrap()
    }

    const NOW: u64 = 1_800_000_000;

    fn claims() -> Value {
        json!({ "iss": "https://idp", "aud": "atrium", "sub": "u1", "iat": NOW, "exp": NOW + 300,
                "nonce": "n1", "preferred_username": "bob" })
    }

    fn check(token: &str, set: &JwkSet) -> Result<Map<String, Value>, OidcError> {
        let algs = [Algorithm::EdDSA, Algorithm::RS256];
        let (alg, kid) = header(token, &algs)?;
        let key = find_key(set, alg, kid.as_deref())
            .map_err(|_| OidcError::Token("unknown key".into()))?;
        let now = jsonwebtoken::get_current_timestamp();
        verify(
            token,
            key,
            alg,
            &Expected { issuer: "https://idp", client_id: "atrium", nonce: "n1", now_secs: now },
        )
    }

    fn fresh(mut c: Value) -> Value {
        // Times relative to the real clock (jsonwebtoken reads it for exp).
        let now = jsonwebtoken::get_current_timestamp();
        c["iat"] = json!(now);
        if c["exp"] == json!(NOW + 300) {
            c["exp"] = json!(now + 300);
        }
        c
    }

    #[test]
    fn a_good_token_passes_and_every_bad_one_is_refused() {
        let (enc, jwk) = key("k1");
        let set = JwkSet { keys: vec![jwk] };
        let good = sign(&enc, "k1", &fresh(claims()));
        assert_eq!(check(&good, &set).unwrap()["preferred_username"], "bob");

        let bad = |c: Value| check(&sign(&enc, "k1", &fresh(c)), &set).unwrap_err().to_string();
        let mut c = claims();
        c["aud"] = json!("another");
        assert!(bad(c).contains("another client"));
        let mut c = claims();
        c["aud"] = json!(["atrium", "other"]);
        assert!(bad(c).contains("azp"));
        let mut c = claims();
        c["aud"] = json!(["atrium", "other"]);
        c["azp"] = json!("atrium");
        assert!(check(&sign(&enc, "k1", &fresh(c)), &set).is_ok());
        let mut c = claims();
        c["azp"] = json!("another");
        assert!(bad(c).contains("azp"));
        let mut c = claims();
        c["iss"] = json!("https://evil");
        assert!(bad(c).contains("another issuer"));
        let mut c = claims();
        c["nonce"] = json!("n2");
        assert!(bad(c).contains("nonce"));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nonce");
        assert!(bad(c).contains("nonce"));
        let mut c = claims();
        c["exp"] = json!(jsonwebtoken::get_current_timestamp() - 3600);
        assert!(bad(c).contains("expired"));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        assert!(bad(c).contains("required claim"));
        let mut c = fresh(claims());
        c["iat"] = json!(jsonwebtoken::get_current_timestamp() + 3600);
        assert!(check(&sign(&enc, "k1", &c), &set).unwrap_err().to_string().contains("future"));

        // A changed payload under the old signature.
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = fresh(claims());
        c["sub"] = json!("admin");
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&c).unwrap(),
        );
        let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert!(check(&tampered, &set).unwrap_err().to_string().contains("signature"));

        // Another key with the same kid: not the provider's signature.
        let (other, _) = key("k1");
        assert!(
            check(&sign(&other, "k1", &fresh(claims())), &set)
                .unwrap_err()
                .to_string()
                .contains("signature")
        );
        // An unknown kid is a lookup miss (the caller refreshes the keys once).
        let t = sign(&enc, "k2", &fresh(claims()));
        let (alg, kid) = header(&t, &[Algorithm::EdDSA]).unwrap();
        assert_eq!(find_key(&set, alg, kid.as_deref()).unwrap_err(), KeyLookup::Unknown);
    }

    #[test]
    fn algorithms_are_pinned() {
        // alg none and HMAC are never accepted, whatever the provider publishes.
        let published: Vec<String> =
            ["none", "HS256", "RS256", "ES256", "XX"].iter().map(|s| s.to_string()).collect();
        assert_eq!(accepted_algorithms(&[], &published), vec![Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(accepted_algorithms(&["ES256".into()], &published), vec![Algorithm::ES256]);
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
        assert!(header(none, &[Algorithm::RS256]).is_err());
        // An EdDSA token when only RS256 is accepted: refused before any key is used.
        let (enc, _) = key("k1");
        let t = sign(&enc, "k1", &claims());
        assert!(header(&t, &[Algorithm::RS256]).unwrap_err().to_string().contains("not accepted"));
        assert!(header(&"a".repeat(MAX_ID_TOKEN + 1), &[Algorithm::RS256]).is_err());
    }
}
