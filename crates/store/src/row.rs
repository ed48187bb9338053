//! Reading typed values out of rows and turning Rust values into what the database holds.
//! Only the types sqlx's Any driver maps on both backends are used: `i64`, `String` and their
//! `Option`s.

use std::str::FromStr;

use sqlx::Row;
use sqlx::any::AnyRow;
use vmfleet_core::Timestamp;

use crate::Resources;
use crate::error::StoreError;

pub(crate) fn text(row: &AnyRow, col: &str) -> Result<String, StoreError> {
    Ok(row.try_get::<String, _>(col)?)
}

pub(crate) fn opt_text(row: &AnyRow, col: &str) -> Result<Option<String>, StoreError> {
    Ok(row.try_get::<Option<String>, _>(col)?)
}

pub(crate) fn int(row: &AnyRow, col: &str) -> Result<i64, StoreError> {
    Ok(row.try_get::<i64, _>(col)?)
}

pub(crate) fn opt_int(row: &AnyRow, col: &str) -> Result<Option<i64>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}

/// A column holding the text form of a typed value.
pub(crate) fn parsed<T>(row: &AnyRow, col: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let s = text(row, col)?;
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("column {col} holds {s:?}: {e}")))
}

pub(crate) fn opt_parsed<T>(row: &AnyRow, col: &str) -> Result<Option<T>, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    opt_text(row, col)?
        .map(|s| {
            s.parse()
                .map_err(|e| StoreError::Corrupt(format!("column {col} holds {s:?}: {e}")))
        })
        .transpose()
}

pub(crate) fn json(row: &AnyRow, col: &str) -> Result<serde_json::Value, StoreError> {
    let s = text(row, col)?;
    serde_json::from_str(&s)
        .map_err(|e| StoreError::Corrupt(format!("column {col} is not JSON: {e}")))
}

pub(crate) fn opt_json(row: &AnyRow, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
    opt_text(row, col)?
        .map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| StoreError::Corrupt(format!("column {col} is not JSON: {e}")))
        })
        .transpose()
}

pub(crate) fn time(row: &AnyRow, col: &str) -> Result<Timestamp, StoreError> {
    Ok(Timestamp::from_unix_millis(int(row, col)?))
}

pub(crate) fn opt_time(row: &AnyRow, col: &str) -> Result<Option<Timestamp>, StoreError> {
    Ok(opt_int(row, col)?.map(Timestamp::from_unix_millis))
}

/// A non-negative integer column as `T` (`u32`, `u64`).
pub(crate) fn unsigned<T: TryFrom<i64>>(row: &AnyRow, col: &str) -> Result<T, StoreError> {
    let n = int(row, col)?;
    T::try_from(n).map_err(|_| StoreError::Corrupt(format!("column {col} holds {n}")))
}

/// Four columns `<prefix>vcpus`, `<prefix>memory_mib`, `<prefix>disk_gib`, `<prefix>gpus`.
pub(crate) fn resources(row: &AnyRow, prefix: &str) -> Result<Resources, StoreError> {
    Ok(Resources {
        vcpus: unsigned(row, &format!("{prefix}vcpus"))?,
        memory_mib: unsigned(row, &format!("{prefix}memory_mib"))?,
        disk_gib: unsigned(row, &format!("{prefix}disk_gib"))?,
        gpus: unsigned(row, &format!("{prefix}gpus"))?,
    })
}

/// An unsigned value as the `BIGINT` that stores it.
pub(crate) fn to_i64(what: &str, n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("{what} {n} is too large to store")))
}

/// The four `BIGINT`s of a [`Resources`], in column order vcpus, memory, disk, GPUs.
pub(crate) fn resource_values(r: &Resources) -> Result<[i64; 4], StoreError> {
    Ok([
        i64::from(r.vcpus),
        to_i64("memory_mib", r.memory_mib)?,
        to_i64("disk_gib", r.disk_gib)?,
        i64::from(r.gpus),
    ])
}
