//! Seed 002's VM endpoints end to end: a control plane and its local agent (as `vmfleet up`
//! runs them), real guests under QEMU. The document's curl examples run as written (host and
//! token replaced by this server's); a signed-in wallet drives its own VM through its life;
//! ownership, serialisation and bad input answer with the document's statuses.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use vmfleet_auth::siwe::testing::TestWallet;
use vmfleet_tests::{Api, KillOnDrop};

/// Signs `wallet` in on `api`'s control plane.
async fn sign_in(api: &Api, wallet: &TestWallet, domain: &str) -> String {
    vmfleet_tests::sign_in(&api.http, &api.base, domain, wallet).await
}

/// Waits until `/vm/info` of `owner`'s VM `id` shows `state`.
async fn wait_state(api: &Api, token: &str, id: &str, owner: &str, state: &str) -> Value {
    api.wait_state(token, &json!({"build_id": id, "owner": owner}), state)
        .await
}

/// The `curl` commands of seed 002, each with its continuation lines joined.
fn seed_curls() -> Vec<String> {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/seeds");
    let doc = std::fs::read_dir(&seeds)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("002_"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap();
    let mut cmds = Vec::new();
    let mut in_bash = false;
    let mut cur = String::new();
    for line in doc.lines() {
        if line.starts_with("```bash") {
            in_bash = true;
            continue;
        }
        if line.starts_with("```") {
            in_bash = false;
            if !cur.is_empty() {
                cmds.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if !in_bash {
            continue;
        }
        // A command runs from its `curl` line to the next blank or comment line.
        if line.trim().is_empty() || line.starts_with('#') {
            if !cur.is_empty() {
                cmds.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with("curl ") || !cur.is_empty() {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if !cur.is_empty() {
        cmds.push(cur);
    }
    cmds
}

/// Runs a seed curl command against this server with `token`; returns its JSON answer.
fn run_curl(cmd: &str, base: &str, token: &str, build_id: &str) -> Value {
    let cmd = cmd
        .replace("https://node.formation.cloud:3002", base)
        .replace("<JWT_TOKEN>", token)
        .replace("build-123456789", build_id);
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{} --silent --show-error", cmd.trim_end()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{cmd}: not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vm_api_drives_real_guests() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    // Seed 002's limits: the wallets below stay within 100 requests a minute. The local node
    // is online with its capacity when this returns.
    let (plane, agent, base, admin) = vmfleet_tests::plane_with_local_node(dir.path()).await;
    let api = Api::new(&base);

    // Seed 002's curl examples, as written: create, boot, info (an admin acts for the
    // document's owner).
    let curls = seed_curls();
    assert_eq!(curls.len(), 3, "{curls:?}");
    let created = run_curl(&curls[0], &base, &admin, "");
    assert_eq!(created["success"], json!(true), "{created}");
    let id = created["vm_id"].as_str().unwrap().to_owned();
    let booted = run_curl(&curls[1], &base, &admin, &id);
    assert_eq!(booted["success"], json!(true), "{booted}");
    let seed_owner = "0x1234567890abcdef1234567890abcdef12345678";
    wait_state(&api, &admin, &id, seed_owner, "running").await;
    let info = run_curl(&curls[2], &base, &admin, &id);
    assert_eq!(info["build_id"], json!(id));
    assert_eq!(info["name"], "web-server");
    assert_eq!(info["state"], "running");
    assert_eq!(
        info["resources"],
        json!({"vcpu_count": 2, "mem_size_mib": 2048, "disk_size": 10})
    );
    let (status, _) = api
        .post(
            "/vm/delete",
            &admin,
            json!({"build_id": id, "owner": seed_owner}),
        )
        .await;
    assert_eq!(status, 200);

    // A wallet signs in and drives its own VM.
    let wallet = TestWallet::from_secret([5u8; 32]).unwrap();
    let token = sign_in(&api, &wallet, &plane.addr().to_string()).await;
    let me = wallet.address().to_string();
    let create =
        json!({"name": "mine", "owner": me, "vm_config": {"vcpu_count": 1, "mem_size_mib": 256}});
    let (status, created) = api.post("/vm/create", &token, create.clone()).await;
    assert_eq!(status, 200, "{created}");
    let mine = created["vm_id"].as_str().unwrap().to_owned();
    let vm = json!({"build_id": mine, "owner": me});
    // The same name again is a conflict; another owner in the body is forbidden.
    let (status, _) = api.post("/vm/create", &token, create).await;
    assert_eq!(status, 409);
    let other = json!({"name": "x", "owner": seed_owner, "vm_config": {"vcpu_count": 1, "mem_size_mib": 256}});
    let (status, body) = api.post("/vm/create", &token, other).await;
    assert_eq!(status, 403, "{body}");
    // Starting a VM never booted is a conflict with a reason.
    let (status, body) = api.post("/vm/start", &token, vm.clone()).await;
    assert_eq!(status, 409, "{body}");

    let (status, body) = api.post("/vm/boot", &token, vm.clone()).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&api, &token, &mine, &me, "running").await;
    let (status, list) = api.post("/vm/list", &token, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only the caller's VMs: {list}"
    );
    assert_eq!(list[0]["build_id"], json!(mine));

    // Someone else's VM is not found, whoever asks about it.
    let thief = TestWallet::from_secret([6u8; 32]).unwrap();
    let thief_token = sign_in(&api, &thief, &plane.addr().to_string()).await;
    let (status, _) = api
        .post(
            "/vm/info",
            &thief_token,
            json!({"build_id": mine, "owner": thief.address().to_string()}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = api.post("/vm/stop", &thief_token, vm.clone()).await;
    assert_eq!(status, 403);
    let (status, list) = api.post("/vm/list", &thief_token, json!({})).await;
    assert_eq!((status, list), (200, json!([])));

    // A snapshot of the running guest.
    let (status, snap) = api.post("/vm/snapshot", &token, vm.clone()).await;
    assert_eq!(status, 200, "{snap}");
    let snapshot_id = snap["snapshot_id"].as_str().unwrap().to_owned();
    // A core dump of the running guest's memory, on its node.
    let (status, dump) = api.post("/vm/coredump", &token, vm.clone()).await;
    assert_eq!(status, 200, "{dump}");
    let core = std::fs::read(dump["path"].as_str().unwrap()).unwrap();
    assert!(
        core.len() > 200 << 20,
        "a core of 256 MiB of memory: {}",
        core.len()
    );
    assert_eq!(&core[..4], b"\x7fELF");
    drop(core);
    // Committing the disk of a running VM is refused: it changes while it runs.
    let commit = json!({"build_id": mine, "owner": me, "image_name": "mine-disk.ext4"});
    let (status, body) = api.post("/vm/commit", &token, commit.clone()).await;
    assert_eq!(status, 409, "{body}");

    // Two reboots race: one is refused while the other is in flight.
    let (a, b) = tokio::join!(
        api.post("/vm/reboot", &token, vm.clone()),
        api.post("/vm/reboot", &token, vm.clone())
    );
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{a:?} {b:?}");
    wait_state(&api, &token, &mine, &me, "running").await;

    // Forced off; restored from the snapshot (it runs again); forced off; started again.
    let force = json!({"build_id": mine, "owner": me, "force": true});
    let (status, body) = api.post("/vm/stop", &token, force.clone()).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&api, &token, &mine, &me, "stopped").await;
    // Stopped, its disk becomes an image of the node's catalog, once.
    let (status, body) = api.post("/vm/commit", &token, commit.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(dir.path().join("data/vms/images/mine-disk.ext4").is_file());
    let (status, body) = api.post("/vm/commit", &token, commit).await;
    assert_eq!(status, 409, "{body}");
    let restore = json!({"build_id": mine, "owner": me, "snapshot_id": snapshot_id});
    let (status, body) = api.post("/vm/restore", &token, restore).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&api, &token, &mine, &me, "running").await;
    // The owner lists the snapshot (with what it takes on the node) and deletes it; nobody
    // else sees it.
    let (status, list) = api.post("/vm/snapshot/list", &token, vm.clone()).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["snapshot_id"], json!(snapshot_id), "{list}");
    assert!(list[0]["size_bytes"].as_u64().unwrap() > 1 << 20, "{list}");
    let age = vmfleet_core::Timestamp::now().unix_millis() / 1000
        - list[0]["created_at"].as_i64().unwrap();
    assert!((0..600).contains(&age), "taken {age} s ago: {list}");
    let theirs = json!({"build_id": mine, "owner": thief.address().to_string()});
    let (status, _) = api
        .post("/vm/snapshot/list", &thief_token, theirs.clone())
        .await;
    assert_eq!(status, 404);
    let mut stolen = theirs;
    stolen["snapshot_id"] = json!(snapshot_id);
    let (status, _) = api.post("/vm/snapshot/delete", &thief_token, stolen).await;
    assert_eq!(status, 404);
    let snap_dir = dir
        .path()
        .join(format!("data/vms/instances/{mine}/snapshots/{snapshot_id}"));
    assert!(snap_dir.is_dir(), "{snap_dir:?}");
    let delete = json!({"build_id": mine, "owner": me, "snapshot_id": snapshot_id});
    let (status, body) = api
        .post("/vm/snapshot/delete", &token, delete.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!snap_dir.exists(), "{snap_dir:?} stayed");
    let (status, body) = api.post("/vm/snapshot/delete", &token, delete).await;
    assert_eq!(status, 404, "{body}");
    let (status, list) = api.post("/vm/snapshot/list", &token, vm.clone()).await;
    assert_eq!((status, list), (200, json!([])));
    let bad = json!({"build_id": mine, "owner": me, "snapshot_id": "../x"});
    let (status, body) = api.post("/vm/snapshot/delete", &token, bad).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.post("/vm/stop", &token, force.clone()).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&api, &token, &mine, &me, "stopped").await;
    let (status, body) = api.post("/vm/start", &token, vm.clone()).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&api, &token, &mine, &me, "running").await;

    // A disk is added to a stopped VM only (no driver hot-plugs one), and comes with it.
    let add = json!({"build_id": mine, "owner": me, "size_gb": 1});
    let (status, body) = api.post("/vm/disk/add", &token, add.clone()).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = api.post("/vm/stop", &token, force).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&api, &token, &mine, &me, "stopped").await;
    let (status, body) = api.post("/vm/disk/add", &token, add).await;
    assert_eq!(status, 200, "{body}");
    let disk = dir
        .path()
        .join(format!("data/vms/instances/{mine}/disk0.raw"));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 30, "{disk:?}");
    let huge = json!({"build_id": mine, "owner": me, "size_gb": 1_000_000});
    let (status, body) = api.post("/vm/disk/add", &token, huge).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.post("/vm/start", &token, vm.clone()).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&api, &token, &mine, &me, "running").await;

    // Bad input is a JSON 400.
    let (status, body) = api
        .post("/vm/stop", &token, json!({"build_id": mine}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = api
        .post("/vm/create", &token, json!({"name": "big", "owner": me, "vm_config": {"vcpu_count": 0, "mem_size_mib": 256}}))
        .await;
    assert_eq!(status, 400);

    // Delete: the guest is gone from its node, and its runs were metered.
    let (status, body) = api.post("/vm/delete", &token, vm.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api.post("/vm/info", &token, vm).await;
    assert_eq!(status, 404);
    let usage = plane
        .store()
        .usage_by_owner(&wallet.address())
        .await
        .unwrap();
    assert_eq!(
        usage.records, 4,
        "four runs (boot, restore, start, start with the new disk): {usage:?}"
    );
    agent.stop().await;
    plane.stop().await.unwrap();
}
