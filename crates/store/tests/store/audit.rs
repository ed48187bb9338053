use sqlx::{Connection, Executor};
use vmfleet_core::{NodeId, VmId};
use vmfleet_store::{Actor, AuditTarget};

use crate::common::{TestDb, on_both_backends, wallet};

on_both_backends!(the_audit_log_is_append_only);

async fn the_audit_log_is_append_only(db: &TestDb) {
    let s = &db.store;
    let vm = AuditTarget::Vm(VmId::new("vm-1").unwrap());
    let node_id = NodeId::generate();
    let node = AuditTarget::Node(node_id.clone());
    let who = Actor::User(wallet(1));
    let e1 = s
        .append_audit(&who, "vm.create", &vm, &serde_json::json!({"name": "web"}))
        .await
        .unwrap();
    let e2 = s
        .append_audit(
            &Actor::Node(node_id),
            "node.status",
            &node,
            &serde_json::json!({"from": "OFFLINE", "to": "ONLINE"}),
        )
        .await
        .unwrap();
    let e3 = s
        .append_audit(
            &Actor::System,
            "vm.state",
            &vm,
            &serde_json::json!({"to": "running"}),
        )
        .await
        .unwrap();
    assert!(e1.id < e2.id && e2.id < e3.id);

    let about_vm = s.list_audit(&vm).await.unwrap();
    assert_eq!(about_vm, vec![e1.clone(), e3.clone()]);
    assert_eq!(about_vm[0].actor, who);
    assert_eq!(about_vm[0].action, "vm.create");
    assert_eq!(about_vm[0].detail, serde_json::json!({"name": "web"}));
    assert_eq!(s.list_audit(&node).await.unwrap(), vec![e2.clone()]);
    assert_eq!(s.recent_audit(2).await.unwrap(), vec![e3, e2]);
    assert!(s.list_audit(&AuditTarget::System).await.unwrap().is_empty());

    // Underneath the API, the database itself refuses changes.
    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    for sql in [
        "UPDATE audit_log SET action = 'forged'",
        "DELETE FROM audit_log",
    ] {
        let err = conn.execute(sql).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    conn.close().await.unwrap();
    assert_eq!(s.list_audit(&vm).await.unwrap().len(), 2);
}
