//! The CNI error result: what the plugin prints on stdout when a verb fails.
//!
//! The spec's codes 0-99 are in `proto::code` (the daemon answers with the
//! same numbers); codes the plugin alone produces are here, from 101 up
//! (100 is the daemon's "attach failed").

use std::fmt;

use serde_json::{Map, Value, json};

/// Codes only the plugin produces.
pub mod code {
    /// CHECK found the attachment different from the ADD result
    /// (`prevResult`).
    pub const CHECK_MISMATCH: u32 = 101;
    /// A delegated plugin failed without printing a CNI error.
    pub const INTERNAL: u32 = 999;
}

/// A failed verb: the spec's error structure, without the version (which
/// the dispatcher adds when it prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error JSON: cniVersion, code, msg and details (left out
    /// when empty).
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(cni_version));
        out.insert("code".into(), json!(self.code));
        out.insert("msg".into(), json!(self.msg));
        if !self.details.is_empty() {
            out.insert("details".into(), json!(self.details));
        }
        Value::Object(out)
    }

    /// Reads an error another plugin printed (its cniVersion, if any, is
    /// ignored). `None` when the text is not an error object.
    pub fn from_plugin_output(stdout: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(stdout).ok()?;
        let obj = value.as_object()?;
        let code = u32::try_from(obj.get("code")?.as_u64()?).ok()?;
        let msg = obj.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = obj
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Some(CniError::new(code, msg).with_details(details))
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

impl From<crate::proto::ErrorReply> for CniError {
    fn from(e: crate::proto::ErrorReply) -> Self {
        CniError {
            code: e.code,
            msg: e.msg,
            details: e.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_spec_fields() {
        let e = CniError::new(7, "bad config");
        assert_eq!(
            e.to_json("1.1.0"),
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad config"})
        );
        let e = e.with_details("field x");
        assert_eq!(e.to_json("0.4.0")["details"], "field x");
    }

    #[test]
    fn reads_a_delegated_plugins_error() {
        // host-local prints errors without cniVersion, over several lines.
        let out =
            b"{\n    \"code\": 4,\n    \"msg\": \"required env variables [CNI_PATH] missing\"\n}";
        let e = CniError::from_plugin_output(out).unwrap();
        assert_eq!(e.code, 4);
        assert_eq!(e.msg, "required env variables [CNI_PATH] missing");
        assert!(CniError::from_plugin_output(b"panic: oops").is_none());
        assert!(CniError::from_plugin_output(b"{\"msg\":\"no code\"}").is_none());
    }
}
