use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `success` field of seed 002's bodies, fixed in the type: `Success<true>` on every
/// success body, `Success<false>` on the error body. Decoding refuses the other value, so a
/// body's type says which of the two it is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Success<const OK: bool>;

impl<const OK: bool> fmt::Debug for Success<OK> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Success<{OK}>")
    }
}

impl<const OK: bool> Serialize for Success<OK> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(OK)
    }
}

impl<'de, const OK: bool> Deserialize<'de> for Success<OK> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if bool::deserialize(d)? == OK {
            Ok(Success)
        } else {
            Err(serde::de::Error::custom(format_args!(
                "expected `success: {OK}`"
            )))
        }
    }
}

#[cfg(feature = "openapi")]
impl<const OK: bool> schemars::JsonSchema for Success<OK> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        if OK { "SuccessTrue" } else { "SuccessFalse" }.into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "boolean", "const": OK })
    }
}
