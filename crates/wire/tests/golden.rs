//! Every JSON example of the five documents in `shared/seeds/` is a fixture here; each one
//! decodes into its type and encodes back to equal JSON.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use vmfleet_wire::DecodeError;
use vmfleet_wire::api::*;
use vmfleet_wire::fleet::Ack;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Each fixture and the decoder of the type its document gives it.
fn manifest() -> Vec<(&'static str, Decoder)> {
    vec![
        ("000/create_vm.json", node_request),
        ("000/stop_vm.json", node_request),
        ("000/terminate_vm.json", node_request),
        ("000/get_vm_status.json", node_request),
        ("000/get_buyer_vms.json", node_request),
        ("001/heartbeat.json", HEARTBEAT),
        ("001/ack.json", rest::<Ack>),
        ("001/instance_started.json", INSTANCE_STARTED),
        ("001/instance_stopped.json", INSTANCE_STOPPED),
        ("001/start_instance.json", START_INSTANCE),
        ("001/stop_instance.json", STOP_INSTANCE),
        ("001/drain_node.json", DRAIN_NODE),
        ("002/health_response.json", rest::<Health>),
        ("002/ping_request.json", rest::<PingRequest>),
        ("002/ping_response.json", rest::<PingResponse>),
        ("002/create_request.json", rest::<CreateVmRequest>),
        ("002/create_response.json", rest::<CreateVmResponse>),
        ("002/create_error.json", rest::<ErrorBody>),
        ("002/boot_request.json", rest::<VmRef>),
        ("002/boot_response.json", rest::<ActionResponse>),
        ("002/start_request.json", rest::<VmRef>),
        ("002/start_response.json", rest::<ActionResponse>),
        ("002/stop_request.json", rest::<StopVmRequest>),
        ("002/stop_response.json", rest::<ActionResponse>),
        ("002/reboot_request.json", rest::<VmRef>),
        ("002/reboot_response.json", rest::<ActionResponse>),
        ("002/delete_request.json", rest::<VmRef>),
        ("002/delete_response.json", rest::<ActionResponse>),
        ("002/info_request.json", rest::<VmRef>),
        ("002/info_response.json", rest::<VmInfo>),
        ("002/list_response.json", rest::<Vec<VmInfo>>),
        ("002/curl_create_request.json", rest::<CreateVmRequest>),
        ("002/curl_boot_request.json", rest::<VmRef>),
        ("002/curl_info_request.json", rest::<VmRef>),
        ("003/metrics.json", ws_any),
        ("003/response.json", ws_any),
        ("003/console.json", ws_any),
        ("003/console_input.json", ws_client),
        ("004/status.json", ws_any),
        ("004/metrics.json", ws_any),
        ("004/command.json", ws_client),
        ("004/response.json", ws_any),
        ("004/console.json", ws_any),
        ("004/console_input.json", ws_client),
        ("004/error.json", ws_any),
        ("004/usage_command_restart.json", ws_client),
        ("004/usage_console_input.json", ws_client),
    ]
}

/// Seed 003 writes two examples with the alternatives of a field spelled `a|b|c`: the
/// example stands for one message per alternative. The text as written is not a valid
/// message; each alternative is, and round-trips.
const PLACEHOLDER_FIXTURES: [(&str, &str, Decoder); 2] = [
    (
        "003/status.json",
        "running|stopped|paused|shutdown|crashed|unknown",
        ws_any,
    ),
    (
        "003/command.json",
        "start|stop|restart|suspend|resume",
        ws_client,
    ),
];

/// Seed 004's envelope example holds a `//` comment where `data` goes: a schematic.
const SCHEMATIC_FIXTURES: [&str; 1] = ["004/envelope.jsonc"];

fn assert_roundtrip(rel: &str, text: &str, decode: Decoder) {
    let expected: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let encoded = decode(text).unwrap_or_else(|e| {
        let src = std::error::Error::source(&e).map(|s| s.to_string());
        panic!("{rel} does not decode: {e} ({src:?})")
    });
    assert!(
        json_eq(&expected, &encoded),
        "{rel} does not round-trip:\n  in:  {expected}\n  out: {encoded}"
    );
    // And the encoding is stable: decoding our own output gives the same output.
    let again = decode(&encoded.to_string()).unwrap();
    assert_eq!(again, encoded, "{rel}: encoding is not stable");
}

#[test]
fn every_fixture_round_trips() {
    for (rel, decode) in manifest() {
        assert_roundtrip(rel, &read(rel), decode);
    }
}

#[test]
fn placeholder_examples_expand_to_valid_messages() {
    for (rel, alternatives, decode) in PLACEHOLDER_FIXTURES {
        let text = read(rel);
        assert!(text.contains(alternatives), "{rel} changed");
        assert!(
            matches!(decode(&text), Err(DecodeError::Invalid { .. })),
            "{rel}: a placeholder value must not decode"
        );
        for alt in alternatives.split('|') {
            let one = text.replace(alternatives, alt);
            assert_roundtrip(&format!("{rel} [{alt}]"), &one, decode);
        }
    }
}

#[test]
fn the_schematic_envelope_is_a_typed_error() {
    for rel in SCHEMATIC_FIXTURES {
        let text = read(rel);
        assert!(matches!(ws_any(&text), Err(DecodeError::Malformed(_))));
    }
}

/// No fixture sits in the directory without a check.
#[test]
fn every_fixture_file_is_checked() {
    let mut listed: BTreeSet<String> = manifest().iter().map(|(p, _)| p.to_string()).collect();
    listed.extend(PLACEHOLDER_FIXTURES.iter().map(|(p, _, _)| p.to_string()));
    listed.extend(SCHEMATIC_FIXTURES.iter().map(|p| p.to_string()));
    let mut on_disk = BTreeSet::new();
    for dir in std::fs::read_dir(fixtures_dir()).unwrap() {
        let dir = dir.unwrap().path();
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            on_disk.insert(
                f.strip_prefix(fixtures_dir())
                    .unwrap()
                    .display()
                    .to_string(),
            );
        }
    }
    assert_eq!(listed, on_disk);
}

/// The fixtures are the documents' examples: every ```json block of every seed is one of
/// them, and nothing was edited on the way. Needs `shared/` beside the repository, as on
/// every developer machine and in CI.
#[test]
fn fixtures_are_the_seed_examples() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/seeds");
    let entries = std::fs::read_dir(&seeds).unwrap_or_else(|e| {
        panic!(
            "the seed documents are expected at {}: {e}",
            seeds.display()
        )
    });
    let fixtures: Vec<String> = {
        let mut all: Vec<(&str, _)> = manifest().into_iter().collect();
        all.extend(PLACEHOLDER_FIXTURES.iter().map(|(p, _, d)| (*p, *d)));
        all.iter().map(|(p, _)| read(p)).collect()
    };
    let fixture_values: Vec<Value> = fixtures
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let schematics: Vec<String> = SCHEMATIC_FIXTURES.iter().map(|p| read(p)).collect();
    let mut blocks = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with('0') {
            continue;
        }
        let doc = std::fs::read_to_string(&path).unwrap();
        for block in doc.split("```json\n").skip(1) {
            let block = &block[..block.find("```").unwrap()];
            blocks += 1;
            match serde_json::from_str::<Value>(block) {
                Ok(v) => assert!(
                    fixture_values.contains(&v),
                    "{}: this example has no fixture:\n{block}",
                    path.display()
                ),
                Err(_) => assert!(
                    schematics.iter().any(|s| s == block),
                    "{}: this non-JSON block is not a known schematic:\n{block}",
                    path.display()
                ),
            }
        }
    }
    assert_eq!(
        blocks, 45,
        "the seed documents changed: review the fixtures"
    );
}
