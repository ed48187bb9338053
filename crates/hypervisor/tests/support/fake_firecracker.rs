//! `fake-firecracker`: a stand-in for the `firecracker` binary, for tests on machines without
//! KVM. It takes Firecracker's command line, serves its API socket with a small HTTP/1.1
//! server of its own (strict the way Firecracker's micro_http is: `Name: value` headers,
//! `Content-Length` bodies, no chunked encoding), and keeps Firecracker's ordering rules that
//! matter to a driver (pre-boot only, post-boot only, snapshot load only on a fresh process,
//! snapshot create only when paused). It records every request, echoes its stdin to its stdout
//! (a serial console with a shell that echoes), and writes Firecracker-shaped metrics lines on
//! `FlushMetrics`.
//!
//! Files in the directory of the API socket:
//! - `fake-requests.jsonl` (written): one `{"method","path","body"}` line per request, `body`
//!   the parsed JSON (or the raw text when it does not parse, or null when empty).
//! - `fake-argv.json` (written): the command line.
//! - `fake-control.json` (read, optional): `{"refuse": {"PUT /boot-source": "fault"},
//!   "exit_after_start": {"code": 1, "stderr": "text", "delay_ms": 50},
//!   "exit_at_once": {"code": 1, "stderr": "text"}}`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Default)]
struct State {
    started: bool,
    paused: bool,
    /// Something other than the logger or metrics was configured (a snapshot load is refused).
    configured: bool,
    boot_source: bool,
    metrics: Option<File>,
    flushes: u64,
}

struct Fake {
    id: String,
    control: Value,
    state: Mutex<State>,
    log: Mutex<File>,
}

impl Fake {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, method: &str, path: &str, body: &Value) {
        let line = json!({"method": method, "path": path, "body": body});
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(log, "{line}");
        let _ = log.flush();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(socket) = value("--api-sock") else {
        eprintln!("Error: --api-sock is required by this fake");
        std::process::exit(153);
    };
    let id = value("--id").unwrap_or_else(|| "anonymous-instance".to_owned());
    let socket = PathBuf::from(socket);
    let dir = socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let _ = std::fs::write(dir.join("fake-argv.json"), json!(args).to_string());
    let control: Value = std::fs::read(dir.join("fake-control.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);

    if let Some(exit) = control.get("exit_at_once") {
        die(exit);
    }

    let log = match OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fake-requests.jsonl"))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("Error: cannot open the request log: {e}");
            std::process::exit(1);
        }
    };
    // Like Firecracker: an existing socket file is an error, not something to replace.
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "Error: Failed to open the API socket at {}: {e}",
                socket.display()
            );
            std::process::exit(1);
        }
    };

    let fake = Arc::new(Fake {
        id,
        control,
        state: Mutex::new(State::default()),
        log: Mutex::new(log),
    });

    std::thread::spawn(echo_serial);

    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let fake = fake.clone();
                std::thread::spawn(move || serve(stream, &fake));
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
}

/// Exits as a failing Firecracker would: a message on stderr, a non-zero status.
fn die(how: &Value) -> ! {
    if let Some(text) = how.get("stderr").and_then(Value::as_str) {
        eprintln!("{text}");
    }
    let code = how.get("code").and_then(Value::as_i64).unwrap_or(1);
    std::process::exit(i32::try_from(code).unwrap_or(1));
}

/// The serial console: what comes in on stdin goes back out on stdout, like a tty's echo.
fn echo_serial() {
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 4096];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut out = std::io::stdout();
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

fn serial_print(text: &str) {
    let mut out = std::io::stdout();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

enum Parse {
    Request(Request),
    Closed,
    Bad(String),
}

fn read_request(reader: &mut BufReader<UnixStream>) -> Parse {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => return Parse::Closed,
        Ok(_) => {}
    }
    let parts: Vec<&str> = line.trim_end_matches("\r\n").split(' ').collect();
    let [method, path, version] = parts[..] else {
        return Parse::Bad(format!("bad request line {line:?}"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Parse::Bad(format!("unsupported version {version}"));
    }
    let (method, path) = (method.to_owned(), path.to_owned());
    let mut content_length: Option<usize> = None;
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return Parse::Closed,
            Ok(_) => {}
        }
        let header = header.trim_end_matches("\r\n");
        if header.is_empty() {
            break;
        }
        // micro_http splits on ": " and refuses anything else.
        let Some((name, value)) = header.split_once(": ") else {
            return Parse::Bad(format!("malformed header {header:?}"));
        };
        match name.to_ascii_lowercase().as_str() {
            "content-length" => match value.trim().parse() {
                Ok(n) => content_length = Some(n),
                Err(_) => return Parse::Bad(format!("bad Content-Length {value:?}")),
            },
            "transfer-encoding" => {
                return Parse::Bad(format!("Transfer-Encoding {value:?} is not supported"));
            }
            "content-type" | "accept"
                if !matches!(value.trim(), "application/json" | "text/plain") =>
            {
                return Parse::Bad(format!("unsupported media type {value:?}"));
            }
            _ => {}
        }
    }
    if matches!(method.as_str(), "PUT" | "PATCH") && content_length.is_none() {
        return Parse::Bad(format!("{method} {path} without Content-Length"));
    }
    let mut body = vec![0u8; content_length.unwrap_or(0)];
    if reader.read_exact(&mut body).is_err() {
        return Parse::Closed;
    }
    Parse::Request(Request { method, path, body })
}

enum Reply {
    NoContent,
    Json(u16, Value),
}

fn fault(text: impl Into<String>) -> Reply {
    Reply::Json(400, json!({"fault_message": text.into()}))
}

fn serve(stream: UnixStream, fake: &Fake) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let (reply, after) = match read_request(&mut reader) {
            Parse::Closed => return,
            Parse::Bad(why) => (fault(why), None),
            Parse::Request(req) => {
                let body = if req.body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&req.body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&req.body).into())
                    })
                };
                fake.record(&req.method, &req.path, &body);
                handle(fake, &req.method, &req.path, &body)
            }
        };
        let bytes = match reply {
            Reply::NoContent => {
                "HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n".to_owned()
            }
            Reply::Json(status, value) => {
                let text = value.to_string();
                let reason = if status == 200 { "OK" } else { "Bad Request" };
                format!(
                    "HTTP/1.1 {status} {reason}\r\nServer: Firecracker API\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                )
            }
        };
        if writer.write_all(bytes.as_bytes()).is_err() {
            return;
        }
        if let Some(action) = after {
            action();
        }
    }
}

type After = Option<Box<dyn FnOnce() + Send>>;

const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

fn handle(fake: &Fake, method: &str, path: &str, body: &Value) -> (Reply, After) {
    let key = format!("{method} {path}");
    if let Some(text) = fake.control.pointer("/refuse").and_then(|r| r.get(&key)) {
        return (fault(text.as_str().unwrap_or("refused")), None);
    }
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default();
    let mut st = fake.state();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reply = match (method, segments.as_slice()) {
        ("GET", [""]) => Reply::Json(
            200,
            json!({
                "app_name": "Firecracker",
                "id": fake.id,
                "state": if !st.started { "Not started" } else if st.paused { "Paused" } else { "Running" },
                "vmm_version": "1.99.0-fake",
            }),
        ),
        ("PUT", ["metrics"]) => {
            if st.metrics.is_some() {
                fault("Reinitialization of metrics not allowed.")
            } else {
                // Firecracker opens the path read-write without creating it.
                match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(field("metrics_path"))
                {
                    Ok(f) => {
                        st.metrics = Some(f);
                        Reply::NoContent
                    }
                    Err(e) => fault(format!("Cannot initialize the metrics system: {e}")),
                }
            }
        }
        (
            "PUT",
            [
                "machine-config" | "boot-source" | "drives" | "network-interfaces" | "balloon"
                | "entropy",
                ..,
            ],
        ) => {
            if st.started {
                fault(NOT_AFTER_START)
            } else if segments.len() == 2
                && field(if segments[0] == "drives" {
                    "drive_id"
                } else {
                    "iface_id"
                }) != segments[1]
            {
                fault("The id from the path does not match the id from the body!")
            } else {
                st.configured = true;
                if segments[0] == "boot-source" {
                    st.boot_source = true;
                }
                Reply::NoContent
            }
        }
        ("PUT", ["snapshot", "load"]) => {
            if st.started || st.configured {
                fault(
                    "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
                )
            } else {
                for p in [
                    field("snapshot_path"),
                    body.pointer("/mem_backend/backend_path")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                ] {
                    if !Path::new(p).is_file() {
                        return (fault(format!("Cannot open {p}")), None);
                    }
                }
                st.started = true;
                st.paused = body.get("resume_vm") != Some(&Value::Bool(true));
                serial_print("fake-firecracker: restored from snapshot\r\n");
                Reply::NoContent
            }
        }
        ("PUT", ["snapshot", "create"]) => {
            if !st.started {
                fault(NOT_BEFORE_START)
            } else if !st.paused {
                fault("Cannot create a snapshot: the microVM is not paused.")
            } else {
                let _ = std::fs::write(field("snapshot_path"), b"fake vmstate");
                let _ = std::fs::write(field("mem_file_path"), b"fake memory");
                Reply::NoContent
            }
        }
        ("PATCH", ["vm"]) => {
            if !st.started {
                fault(NOT_BEFORE_START)
            } else {
                st.paused = field("state") == "Paused";
                Reply::NoContent
            }
        }
        ("PATCH", ["balloon"]) => {
            if !st.started {
                fault(NOT_BEFORE_START)
            } else {
                Reply::NoContent
            }
        }
        ("PUT", ["actions"]) => match field("action_type") {
            "InstanceStart" if st.started => fault(NOT_AFTER_START),
            "InstanceStart" if !st.boot_source => {
                fault("Cannot start microvm without kernel configuration.")
            }
            "InstanceStart" => {
                st.started = true;
                serial_print("fake-firecracker: Linux version 6.1.0-fake\r\n");
                drop(st);
                let exit = fake.control.get("exit_after_start").cloned();
                return (
                    Reply::NoContent,
                    exit.map(|how| -> Box<dyn FnOnce() + Send> {
                        Box::new(move || {
                            std::thread::spawn(move || {
                                let ms = how.get("delay_ms").and_then(Value::as_u64).unwrap_or(50);
                                std::thread::sleep(Duration::from_millis(ms));
                                die(&how);
                            });
                        })
                    }),
                );
            }
            "SendCtrlAltDel" if !st.started => fault(NOT_BEFORE_START),
            // The guest takes it as a reboot request; Firecracker exits when the guest resets.
            "SendCtrlAltDel" => {
                return (
                    Reply::NoContent,
                    Some(Box::new(|| {
                        std::thread::spawn(|| {
                            serial_print("fake-firecracker: reboot: Restarting system\r\n");
                            std::thread::sleep(Duration::from_millis(50));
                            std::process::exit(0);
                        });
                    })),
                );
            }
            "FlushMetrics" => {
                st.flushes += 1;
                let n = st.flushes;
                match st.metrics.as_mut() {
                    None => fault("The metrics system was not initialized."),
                    Some(f) => {
                        let line = metrics_line(n);
                        let _ = writeln!(f, "{line}");
                        Reply::NoContent
                    }
                }
            }
            other => fault(format!("unknown action {other:?}")),
        },
        _ => Reply::Json(
            400,
            json!({"fault_message": format!("Invalid request method and/or path: {method} {path}.")}),
        ),
    };
    (reply, None)
}

/// One flushed line, shaped like Firecracker's: per-device and aggregate objects, each counter
/// the change since the previous flush.
fn metrics_line(n: u64) -> Value {
    let block = json!({"read_bytes": 1000, "write_bytes": 500, "read_count": 10, "write_count": 5, "flush_count": 0});
    let net = json!({"rx_bytes_count": 300, "tx_bytes_count": 200, "rx_packets_count": 3, "tx_packets_count": 2});
    let mut root: BTreeMap<&str, Value> = BTreeMap::new();
    root.insert("utc_timestamp_ms", json!(n));
    root.insert("block_rootfs", block.clone());
    root.insert("block", block);
    root.insert("net_eth0", net.clone());
    root.insert("net", net);
    root.insert("vcpu", json!({"exit_io_in": 0}));
    json!(root)
}
