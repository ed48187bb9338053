use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use vmfleet_core::WalletAddress;

type HmacSha256 = Hmac<Sha256>;

/// The only header vmfleet issues or accepts.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// A role, as seed 002's rate limits and CONTRACT's sign-in define them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Standard,
    Privileged,
    Admin,
}

/// What a token lets its holder do with the VMs it may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Control,
    Console,
}

/// Who a token speaks for: a wallet, or an operator of the installation (`vmfleet up`'s admin).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Wallet(WalletAddress),
    Operator(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Wallet(a) => a.fmt(f),
            Subject::Operator(name) => write!(f, "operator:{name}"),
        }
    }
}

impl Subject {
    fn parse(s: &str) -> Option<Self> {
        match s.strip_prefix("operator:") {
            Some(name) if !name.is_empty() => Some(Subject::Operator(name.to_owned())),
            Some(_) => None,
            None => WalletAddress::parse(s).ok().map(Subject::Wallet),
        }
    }
}

/// The claims vmfleet puts in a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub perms: Vec<Permission>,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

/// A token whose header, signature, expiry and claims all checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub subject: Subject,
    pub role: Role,
    pub permissions: Vec<Permission>,
    pub expires_at: i64,
}

impl VerifiedToken {
    pub fn can(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token's algorithm or header is not accepted")]
    BadHeader,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token's claims are not valid")]
    BadClaims,
}

/// The HMAC key tokens are signed with. It never leaves the control plane.
#[derive(Clone)]
pub struct JwtKey([u8; 32]);

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKey(..)")
    }
}

impl JwtKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut k) {
            panic!("the operating system's random source failed: {e}");
        }
        Self(k)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes cannot be refused.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(e) => unreachable!("HMAC-SHA256 takes any key length: {e}"),
        }
    }

    /// Signs `claims` into a compact JWT.
    pub fn issue(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        // Claims are plain data; serializing them cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// Checks a token at time `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<VerifiedToken, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| AuthError::Malformed)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|_| AuthError::Malformed)?;
        let expected: serde_json::Value =
            serde_json::from_str(HEADER).map_err(|_| AuthError::BadHeader)?;
        if header != expected {
            return Err(AuthError::BadHeader);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| AuthError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::BadClaims)?;
        if now >= claims.exp {
            return Err(AuthError::Expired);
        }
        let subject = Subject::parse(&claims.sub).ok_or(AuthError::BadClaims)?;
        Ok(VerifiedToken {
            subject,
            role: claims.role,
            permissions: claims.perms,
            expires_at: claims.exp,
        })
    }

    /// A token for `subject`, valid `ttl_secs` from `now`.
    pub fn issue_for(
        &self,
        subject: &Subject,
        role: Role,
        perms: &[Permission],
        now: i64,
        ttl_secs: i64,
    ) -> String {
        self.issue(&Claims {
            sub: subject.to_string(),
            role,
            perms: perms.to_vec(),
            iat: now,
            exp: now.saturating_add(ttl_secs),
        })
    }
}

/// What a token says about itself, without checking it: its subject, role, permissions and
/// expiry as written in its payload. For a client that holds a token and wants to know whose
/// it is (the CLI naming the owner of a new VM); never a reason to grant anything, which only
/// [`JwtKey::verify`] decides. `None` when the token is not a JWT vmfleet would issue.
pub fn unverified_claims(token: &str) -> Option<VerifiedToken> {
    let mut parts = token.trim().split('.');
    let (Some(_), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let payload = URL_SAFE_NO_PAD.decode(p).ok()?;
    let claims: Claims = serde_json::from_slice(&payload).ok()?;
    Some(VerifiedToken {
        subject: Subject::parse(&claims.sub)?,
        role: claims.role,
        permissions: claims.perms,
        expires_at: claims.exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const ALL: [Permission; 3] = [Permission::Read, Permission::Control, Permission::Console];

    fn wallet() -> Subject {
        Subject::Wallet(WalletAddress::parse("0x1234567890abcdef1234567890abcdef12345678").unwrap())
    }

    #[test]
    fn unverified_claims_read_the_payload_only() {
        let t = JwtKey::generate().issue_for(&wallet(), Role::Standard, &ALL, NOW, 60);
        let c = unverified_claims(&t).unwrap();
        assert_eq!(
            (c.subject, c.role, c.expires_at),
            (wallet(), Role::Standard, NOW + 60)
        );
        for bad in ["", "a.b", "a.b.c.d", "x.!!!.y", "vmf_abc"] {
            assert!(unverified_claims(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn issue_then_verify() {
        let key = JwtKey::generate();
        let t = key.issue_for(&wallet(), Role::Standard, &ALL, NOW, 60);
        let v = key.verify(&t, NOW + 59).unwrap();
        assert_eq!(v.subject, wallet());
        assert_eq!(v.role, Role::Standard);
        assert!(v.can(Permission::Console));
        let op = Subject::Operator("admin".into());
        let t = key.issue_for(&op, Role::Admin, &ALL, NOW, 60);
        assert_eq!(key.verify(&t, NOW).unwrap().subject, op);
    }

    #[test]
    fn expiry_is_checked() {
        let key = JwtKey::generate();
        let t = key.issue_for(&wallet(), Role::Standard, &ALL, NOW, 60);
        assert_eq!(key.verify(&t, NOW + 60), Err(AuthError::Expired));
    }

    #[test]
    fn other_keys_and_tampering_are_refused() {
        let key = JwtKey::generate();
        let t = key.issue_for(&wallet(), Role::Standard, &ALL, NOW, 60);
        assert_eq!(
            JwtKey::generate().verify(&t, NOW),
            Err(AuthError::BadSignature)
        );
        // Promote ourselves to admin without the key.
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims.role = Role::Admin;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert_eq!(key.verify(&forged, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn algorithm_is_pinned() {
        let key = JwtKey::generate();
        let t = key.issue_for(&wallet(), Role::Admin, &ALL, NOW, 60);
        let payload = t.split('.').nth(1).unwrap();
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"HS256","typ":"JWT","kid":"x"}"#,
        ] {
            let h = URL_SAFE_NO_PAD.encode(header);
            assert_eq!(
                key.verify(&format!("{h}.{payload}."), NOW),
                Err(AuthError::BadHeader)
            );
        }
        assert_eq!(key.verify("abc", NOW), Err(AuthError::Malformed));
        assert_eq!(key.verify("a.b.c.d", NOW), Err(AuthError::Malformed));
    }
}
