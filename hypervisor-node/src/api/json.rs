//! Request bodies: JSON that fails to parse is refused with a 400 that names the field at fault
//! (unknown, missing, or of the wrong type), not only a parser message.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ApiError;

/// A field and a check that its value has the field's type.
pub type FieldCheck = (&'static str, fn(&Value) -> Result<(), serde_json::Error>);

pub fn check<T: DeserializeOwned>(v: &Value) -> Result<(), serde_json::Error> {
    T::deserialize(v).map(drop)
}

fn quoted_after<'a>(msg: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &msg[msg.find(prefix)? + prefix.len()..];
    rest.split('`').next()
}

/// Parses `body` as `T`; on failure, finds the field to blame with `checks`.
pub fn parse<T: DeserializeOwned>(body: &[u8], checks: &[FieldCheck]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not valid JSON: {e}"), None)
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object", None));
    }
    T::deserialize(&value).map_err(|e| {
        let msg = e.to_string();
        let known = |f: &str| checks.iter().any(|(n, _)| *n == f);
        // The message names a nested field too (a user's); only a top-level one is the culprit.
        if let Some(f) = quoted_after(&msg, "unknown field `")
            && value.get(f).is_some()
            && !known(f)
        {
            return ApiError::bad_request(format!("unknown field {f:?}"), Some(f));
        }
        if let Some(f) = quoted_after(&msg, "missing field `")
            && value.get(f).is_none()
            && known(f)
        {
            return ApiError::bad_request(format!("{f}: is required"), Some(f));
        }
        for (name, check) in checks {
            if let Some(v) = value.get(*name)
                && let Err(fe) = check(v)
            {
                return ApiError::bad_request(format!("{name}: {fe}"), Some(name));
            }
        }
        ApiError::bad_request(msg, None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_protocol::node::VmSpec;

    fn field_of(body: &str) -> (Option<String>, String) {
        match parse::<VmSpec>(body.as_bytes(), crate::api::vms::SPEC_FIELDS) {
            Err(ApiError::BadRequest { field, message }) => (field, message),
            other => panic!("{body}: expected 400, got {other:?}"),
        }
    }

    #[test]
    fn names_the_field_at_fault() {
        let ok = r#"{"image":"console","vcpus":1,"memory_mib":256,"display":"1024x768"}"#;
        assert!(parse::<VmSpec>(ok.as_bytes(), crate::api::vms::SPEC_FIELDS).is_ok());
        for (body, field) in [
            (r#"{"image":"console","vcpus":"two","memory_mib":256,"display":"1024x768"}"#, "vcpus"),
            (r#"{"image":"console","vcpus":-1,"memory_mib":256,"display":"1024x768"}"#, "vcpus"),
            (
                r#"{"image":"console","vcpus":1,"memory_mib":256.5,"display":"1024x768"}"#,
                "memory_mib",
            ),
            (r#"{"image":"console","vcpus":1,"memory_mib":256,"display":"big"}"#, "display"),
            (r#"{"image":7,"vcpus":1,"memory_mib":256,"display":"1024x768"}"#, "image"),
            (
                r#"{"image":"c","vcpus":1,"memory_mib":256,"display":"1024x768","runtime":"xen"}"#,
                "runtime",
            ),
            (
                r#"{"image":"c","vcpus":1,"memory_mib":256,"display":"1024x768","user":{"name":"x"}}"#,
                "user",
            ),
            (r#"{"image":"c","vcpus":1,"memory_mib":256,"display":"1024x768","evil":1}"#, "evil"),
            (r#"{"vcpus":1,"memory_mib":256,"display":"1024x768"}"#, "image"),
        ] {
            assert_eq!(field_of(body).0.as_deref(), Some(field), "{body}");
        }
        let (field, msg) = field_of("{\"image\": ");
        assert_eq!(field, None);
        assert!(msg.contains("not valid JSON"), "{msg}");
        assert_eq!(field_of("[1,2]").0, None);
    }
}
