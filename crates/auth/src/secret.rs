use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// A new random secret: 32 bytes from the OS, base64url without padding (43 characters).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut bytes) {
        panic!("the operating system's random source failed: {e}");
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a high-entropy secret (a host key, an API token): its SHA-256. The
/// secrets are 256 random bits, so a fast hash is enough; a password would need a slow one.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `secret` hashes to this, in time independent of where they differ.
    pub fn matches(&self, secret: &str) -> bool {
        let other = Self::of(secret);
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretHash({}…)", &self.to_hex()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_only_its_secret() {
        let s = generate_secret();
        assert_eq!(s.len(), 43);
        let h = SecretHash::of(&s);
        assert!(h.matches(&s));
        assert!(!h.matches(&generate_secret()));
        assert_eq!(SecretHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(SecretHash::from_hex("zz"), None);
    }
}
