use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why bytes off the wire did not become a message. Every decoder of this crate returns it;
/// none panics, whatever the input.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the message is not valid JSON")]
    Malformed(#[source] serde_json::Error),
    #[error("the message is not a JSON object")]
    NotAnObject,
    #[error("a Socket.IO event is [name, payload]")]
    NotAnEvent,
    #[error("the message has no `{0}` field")]
    MissingField(&'static str),
    #[error("the `{0}` field must be a string")]
    NotAString(&'static str),
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("message type `{0}` is not accepted from this side")]
    WrongDirection(&'static str),
    #[error("invalid `{kind}` message")]
    Invalid {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl DecodeError {
    /// The message type the error is about, when the type itself was understood.
    pub fn kind(&self) -> Option<&str> {
        match self {
            DecodeError::Invalid { kind, .. } | DecodeError::WrongDirection(kind) => Some(kind),
            DecodeError::UnknownType(kind) => Some(kind),
            _ => None,
        }
    }
}

/// Decodes a request or response body of a known type (`kind` names it in errors).
pub fn decode_body<T: DeserializeOwned>(kind: &'static str, text: &str) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            DecodeError::Malformed(e)
        } else {
            DecodeError::Invalid { kind, source: e }
        }
    })
}

/// Turns a JSON value into `T`, naming `kind` in the error.
pub(crate) fn from_value<T: DeserializeOwned>(
    kind: &'static str,
    v: &Value,
) -> Result<T, DecodeError> {
    from_de(kind, v)
}

/// Reads a `T` from JSON (a value or text), naming `kind` in the error.
pub(crate) fn from_de<'de, T, D>(kind: &'static str, d: D) -> Result<T, DecodeError>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    T::deserialize(d).map_err(|source| DecodeError::Invalid { kind, source })
}

/// Parses text as a JSON object.
pub(crate) fn parse_object(text: &str) -> Result<serde_json::Map<String, Value>, DecodeError> {
    match serde_json::from_str::<Value>(text).map_err(DecodeError::Malformed)? {
        Value::Object(map) => Ok(map),
        _ => Err(DecodeError::NotAnObject),
    }
}

/// Reads the string field `field` of a message object.
pub(crate) fn str_field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, DecodeError> {
    match obj.get(field) {
        None => Err(DecodeError::MissingField(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DecodeError::NotAString(field)),
    }
}

/// Finds `name` in a closed list of message types, giving back the list's `'static` name.
fn known(name: &str, list: &[&'static str]) -> Option<&'static str> {
    list.iter().copied().find(|k| *k == name)
}

/// Names the message type `ty` for a decoder that accepts `accepted`: its `'static` name, or
/// `WrongDirection` when it is one of `other_side`'s, or `UnknownType`.
pub(crate) fn classify(
    ty: &str,
    accepted: &[&'static str],
    other_side: &[&'static str],
) -> Result<&'static str, DecodeError> {
    match (known(ty, accepted), known(ty, other_side)) {
        (Some(kind), _) => Ok(kind),
        (None, Some(other)) => Err(DecodeError::WrongDirection(other)),
        (None, None) => Err(DecodeError::UnknownType(ty.to_owned())),
    }
}
