//! Bytes carried in JSON as standard base64 strings (`#[serde(with = "crate::b64")]`, or
//! `crate::b64::option` for an optional field).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(bytes))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    STANDARD.decode(text.as_bytes()).map_err(|e| D::Error::custom(format!("not base64: {e}")))
}

/// The same for `Option<Vec<u8>>` (`null` or absent: `None`).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => STANDARD
                .decode(text.as_bytes())
                .map(Some)
                .map_err(|e| D::Error::custom(format!("not base64: {e}"))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Both {
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::b64::option")]
        more: Option<Vec<u8>>,
    }

    #[test]
    fn bytes_go_as_base64_and_bad_text_is_refused() {
        let v = Both { data: vec![0, 255, 7], more: None };
        let json = serde_json::to_string(&v).expect("encode");
        assert_eq!(json, r#"{"data":"AP8H"}"#);
        assert_eq!(serde_json::from_str::<Both>(&json).expect("decode"), v);
        let with = serde_json::from_str::<Both>(r#"{"data":"","more":"aGk="}"#).expect("decode");
        assert_eq!(with, Both { data: vec![], more: Some(b"hi".to_vec()) });
        let bad = serde_json::from_str::<Both>(r#"{"data":"*not*"}"#).expect_err("bad base64");
        assert!(bad.to_string().contains("not base64"), "{bad}");
        assert!(serde_json::from_str::<Both>(r#"{"data":"","more":"%%"}"#).is_err());
    }
}
