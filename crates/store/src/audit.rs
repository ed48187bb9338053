//! The audit log: every state change and command, appended, never changed. There is no API to
//! update or delete an entry, and the database refuses it too (triggers in both dialects).

use sqlx::any::AnyRow;

use crate::row::{int, json, parsed, time};
use crate::{Actor, AuditEntry, AuditTarget, Result, Store, now_millis};

const COLS: &str = "id, at, actor, action, target, detail";

fn entry(row: &AnyRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: int(row, "id")?,
        at: time(row, "at")?,
        actor: parsed(row, "actor")?,
        action: crate::row::text(row, "action")?,
        target: parsed(row, "target")?,
        detail: json(row, "detail")?,
    })
}

impl Store {
    /// Appends an entry, stamped now: `actor` did `action` (e.g. `vm.boot`) to `target`.
    pub async fn append_audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &AuditTarget,
        detail: &serde_json::Value,
    ) -> Result<AuditEntry> {
        let row = sqlx::query(&format!(
            "INSERT INTO audit_log (at, actor, action, target, detail)
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLS}"
        ))
        .bind(now_millis())
        .bind(actor.to_string())
        .bind(action)
        .bind(target.to_string())
        .bind(detail.to_string())
        .fetch_one(&self.pool)
        .await?;
        entry(&row)
    }

    /// The entries about `target`, oldest first.
    pub async fn list_audit(&self, target: &AuditTarget) -> Result<Vec<AuditEntry>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM audit_log WHERE target = $1 ORDER BY id"
        ))
        .bind(target.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(entry)
        .collect()
    }

    /// The latest `limit` entries about anything, newest first.
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM audit_log ORDER BY id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(entry)
        .collect()
    }
}
