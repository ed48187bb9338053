//! Who is calling: bearer tokens (JWT, HS256 only) carrying a subject, a role and permissions,
//! and the hashing of long-lived secrets such as node host keys.
//!
//! The JWT header is pinned: anything but `{"alg":"HS256","typ":"JWT"}` is refused before the
//! signature is looked at, so `alg: none` and algorithm confusion cannot happen. Expiry is
//! always checked. The crate does no IO: the caller keeps the key where it likes.

mod jwt;
mod secret;
pub mod siwe;

pub use jwt::{
    AuthError, Claims, JwtKey, Permission, Role, Subject, VerifiedToken, unverified_claims,
};
pub use secret::{SecretHash, generate_secret};
