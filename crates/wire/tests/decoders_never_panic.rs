//! Property test over every decoder of the crate: whatever the input (random bytes, random
//! JSON, the seed examples with a field removed or replaced), a decoder returns a value or a
//! typed error, never panics; and what it accepts, it encodes to JSON that decodes to the
//! same value again.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use proptest::prelude::*;
use serde_json::{Map, Value};

const KEYS: &[&str] = &[
    "type",
    "timestamp",
    "data",
    "vm_id",
    "job_id",
    "buyer_id",
    "vcpu_count",
    "mem_size_mib",
    "nodeId",
    "status",
    "metrics",
    "rentalId",
    "containerId",
    "reason",
    "success",
    "message",
    "build_id",
    "owner",
    "name",
    "vm_config",
    "action",
    "requestId",
    "content",
    "eof",
    "code",
];

const STRINGS: &[&str] = &[
    "create_vm",
    "stop_vm",
    "vm_status",
    "error",
    "status",
    "command",
    "console_input",
    "heartbeat",
    "connection",
    "running",
    "start",
    "online",
    "16g",
    "0x1234567890abcdef1234567890abcdef12345678",
    "2023-05-23T12:34:56Z",
    "../../etc/passwd",
    "",
    "vm-1",
    "AUTH_ERROR",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            prop::sample::select(KEYS).prop_map(String::from),
            "[a-z]{1,6}"
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn fixtures() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            if let Ok(v) = serde_json::from_str(&text) {
                out.push(v);
            }
        }
    }
    out
}

/// Walks into `v` following `choices`, then removes or replaces what it lands on.
fn mutate(v: &mut Value, choices: &[usize], replacement: Option<Value>) {
    let Some((&c, rest)) = choices.split_first() else {
        return;
    };
    match v {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(c % map.len()).cloned().unwrap();
            if rest.is_empty() || !map[&key].is_object() {
                match replacement {
                    Some(r) => {
                        map.insert(key, r);
                    }
                    None => {
                        map.remove(&key);
                    }
                }
            } else {
                mutate(map.get_mut(&key).unwrap(), rest, replacement);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = c % items.len();
            mutate(&mut items[i], rest, replacement);
        }
        _ => {}
    }
}

fn check_all(text: &str) -> Result<(), TestCaseError> {
    for (name, decode) in all_decoders() {
        if let Ok(encoded) = decode(text) {
            let again = decode(&encoded.to_string());
            prop_assert!(
                again.as_ref().is_ok_and(|v| *v == encoded),
                "{name}: accepted {text}, encoded {encoded}, which decodes to {again:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn random_text(text in "\\PC{0,64}") {
        check_all(&text)?;
    }

    #[test]
    fn random_json(v in arb_json()) {
        check_all(&v.to_string())?;
    }

    #[test]
    fn seed_examples_mutated(
        pick in any::<prop::sample::Index>(),
        choices in prop::collection::vec(any::<usize>(), 1..4),
        replacement in prop::option::of(arb_json()),
    ) {
        let all = fixtures();
        let mut v = pick.get(&all).clone();
        mutate(&mut v, &choices, replacement);
        check_all(&v.to_string())?;
    }

    #[test]
    fn seed_examples_truncated(pick in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let all = fixtures();
        let text = pick.get(&all).to_string();
        let at = cut.index(text.len().max(1));
        if text.is_char_boundary(at) {
            check_all(&text[..at])?;
        }
    }
}
