//! Users: wallets that signed in, with their role.

use sqlx::any::AnyRow;
use vmfleet_auth::Role;
use vmfleet_core::WalletAddress;

use crate::error::not_found;
use crate::model::{parse_role, role_str};
use crate::row::{parsed, text, time};
use crate::{Result, Store, User, now_millis};

const COLS: &str = "address, role, created_at";

fn user(row: &AnyRow) -> Result<User> {
    Ok(User {
        address: parsed(row, "address")?,
        role: parse_role(&text(row, "role")?)?,
        created_at: time(row, "created_at")?,
    })
}

impl Store {
    /// The user with this wallet, created with `default_role` if it is new (a first sign-in).
    /// An existing user keeps its role.
    pub async fn upsert_user(&self, address: &WalletAddress, default_role: Role) -> Result<User> {
        sqlx::query(
            "INSERT INTO users (address, role, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (address) DO NOTHING",
        )
        .bind(address.to_string())
        .bind(role_str(default_role))
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        self.get_user(address).await
    }

    /// The user with this wallet.
    pub async fn get_user(&self, address: &WalletAddress) -> Result<User> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM users WHERE address = $1"))
            .bind(address.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("user", address))?;
        user(&row)
    }

    /// Changes a user's role.
    pub async fn set_role(&self, address: &WalletAddress, role: Role) -> Result<User> {
        let row = sqlx::query(&format!(
            "UPDATE users SET role = $2 WHERE address = $1 RETURNING {COLS}"
        ))
        .bind(address.to_string())
        .bind(role_str(role))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found("user", address))?;
        user(&row)
    }

    /// Every user, in the order they first signed in.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM users ORDER BY created_at, address"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user)
        .collect()
    }
}
