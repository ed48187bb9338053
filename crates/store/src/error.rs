//! The one error type of the store.

use sqlx::error::ErrorKind;

/// Why a store operation failed. Callers branch on the variant (`NotFound` is a 404,
/// `Conflict` a 409); the message is a sentence fit to show.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for (or one the request refers to) does not exist.
    #[error("{what} {key} was not found")]
    NotFound { what: &'static str, key: String },
    /// The change contradicts what is stored: a name already taken, a node still in use, a
    /// rental already ended.
    #[error("{0}")]
    Conflict(String),
    /// A value the database cannot hold (an empty name, a size beyond 2^63).
    #[error("{0}")]
    Invalid(String),
    /// The URL names no backend the store supports. Only the scheme is echoed, never a password.
    #[error(
        "unsupported database URL scheme {0:?}: use sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl(String),
    /// A stored value does not parse back into its type: the database was edited by hand or
    /// by a newer version.
    #[error("the database holds a value the store cannot read: {0}")]
    Corrupt(String),
    /// Bringing the schema up to date failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Anything else the database or the connection reported.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub(crate) fn not_found(what: &'static str, key: impl std::fmt::Display) -> StoreError {
    StoreError::NotFound {
        what,
        key: key.to_string(),
    }
}

/// The kind of a database-reported error, when it is one.
fn kind(e: &sqlx::Error) -> Option<ErrorKind> {
    e.as_database_error().map(|d| d.kind())
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    kind(e) == Some(ErrorKind::UniqueViolation)
}

pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    kind(e) == Some(ErrorKind::ForeignKeyViolation)
}
