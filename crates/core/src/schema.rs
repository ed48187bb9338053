//! JSON Schemas of the types that cross the wire as strings (feature `schemars`): what each
//! one's parser accepts, as a pattern the control plane's OpenAPI document can state.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::{ByteSize, ChecksumAddress, WalletAddress};

/// The id alphabet of `ids::check_id`: a letter or digit, then letters, digits, `_`, `.`, `-`
/// and `extra`, at most `max` bytes.
pub(crate) fn id_schema(kind: &str, max: usize, extra: &str) -> Schema {
    let extra: String = extra
        .chars()
        .map(|c| match c {
            '\\' | ']' | '[' | '^' | '-' => format!("\\{c}"),
            c => c.to_string(),
        })
        .collect();
    json_schema!({
        "type": "string",
        "description": format!("A {kind}: a letter or digit, then letters, digits, `_`, `.` or `-`."),
        "pattern": format!("^[A-Za-z0-9][A-Za-z0-9_.\\-{extra}]*$"),
        "minLength": 1,
        "maxLength": max,
    })
}

impl JsonSchema for WalletAddress {
    fn schema_name() -> Cow<'static, str> {
        "WalletAddress".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An Ethereum address: `0x` and 40 hex digits; mixed case must be a valid EIP-55 checksum.",
            "pattern": "^0[xX][0-9a-fA-F]{40}$",
        })
    }
}

impl JsonSchema for ChecksumAddress {
    fn schema_name() -> Cow<'static, str> {
        "ChecksumAddress".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An Ethereum address in its EIP-55 checksum form.",
            "pattern": "^0x[0-9a-fA-F]{40}$",
        })
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A size larger than zero: digits and an optional 1024-based unit b, k, m, g or t (`16g`).",
            "pattern": "^\\s*[0-9]+([bkmgtBKMGT][bB]?)?\\s*$",
            "examples": ["512m", "16g"],
        })
    }
}
