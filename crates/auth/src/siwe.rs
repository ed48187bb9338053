//! Sign-In with Ethereum: the EIP-4361 message a wallet signs, and the EIP-191
//! (`personal_sign`) signature over it.
//!
//! [`SiweMessage::parse`] reads the message's fields; [`recover_signer`] finds the address whose
//! key made a signature; [`SiweMessage::check`] holds the message to what the server expects
//! (its domain, a nonce it issued, an issue time that is recent and not in the future, an
//! expiry not passed, a not-before reached). Taking the nonce (once) is the caller's, who owns
//! the database. No IO.

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use sha3::{Digest, Keccak256};
use vmfleet_core::{Timestamp, WalletAddress};

/// How old a message's `Issued At` may be.
pub const MAX_MESSAGE_AGE_SECS: i64 = 5 * 60;

/// How far a wallet's clock may run ahead of the server's.
pub const CLOCK_SKEW_SECS: i64 = 60;

const HEADER_SUFFIX: &str = " wants you to sign in with your Ethereum account:";

/// The fields of an EIP-4361 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiweMessage {
    /// The host (and port) the wallet was asked to sign in to.
    pub domain: String,
    pub address: WalletAddress,
    pub statement: Option<String>,
    pub uri: String,
    pub version: String,
    pub chain_id: u64,
    pub nonce: String,
    pub issued_at: Timestamp,
    pub expiration_time: Option<Timestamp>,
    pub not_before: Option<Timestamp>,
    pub request_id: Option<String>,
    pub resources: Vec<String>,
}

/// Why a sign-in was refused. Each is a 401 at the API, with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiweError {
    #[error("the message is not an EIP-4361 sign-in message: {0}")]
    Malformed(String),
    #[error("the signature is not 0x and 65 bytes of hex")]
    BadSignatureEncoding,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the message is for {got}, not {expected}")]
    WrongDomain { got: String, expected: String },
    #[error("the message was issued too long ago or in the future")]
    Stale,
    #[error("the message has expired")]
    Expired,
    #[error("the message is not valid yet")]
    NotYetValid,
    #[error("the signature was made by {signer}, not by {claimed}")]
    WrongSigner { signer: String, claimed: String },
    #[error("the nonce is unknown, used or expired")]
    BadNonce,
    #[error(
        "the private key is not 32 bytes of hex (64 hex digits, `0x` optional) below the curve order"
    )]
    BadPrivateKey,
    #[error("the message could not be signed")]
    Signing,
}

impl SiweMessage {
    /// Reads a message as EIP-4361 writes it.
    pub fn parse(text: &str) -> Result<Self, SiweError> {
        let bad = |why: &str| SiweError::Malformed(why.to_owned());
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let header = lines.next().ok_or_else(|| bad("it is empty"))?;
        let domain = header
            .strip_suffix(HEADER_SUFFIX)
            .ok_or_else(|| bad("the first line is not `<domain> wants you to sign in ...`"))?;
        // A scheme before the domain is allowed; the domain is what follows it.
        let domain = domain.split_once("://").map_or(domain, |(_, d)| d);
        if domain.is_empty() || domain.contains(char::is_whitespace) {
            return Err(bad("the domain is empty or has spaces"));
        }
        let address = lines
            .next()
            .ok_or_else(|| bad("there is no address line"))?;
        let address = WalletAddress::parse(address.trim())
            .map_err(|e| SiweError::Malformed(format!("the address: {e}")))?;

        let mut statement = None;
        let mut fields: Vec<(&str, &str)> = Vec::new();
        let mut resources = Vec::new();
        let mut in_resources = false;
        for line in lines {
            if in_resources {
                match line.strip_prefix("- ") {
                    Some(r) => resources.push(r.to_owned()),
                    None if line.is_empty() => {}
                    None => return Err(bad("a resource line does not start with `- `")),
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            if line == "Resources:" {
                in_resources = true;
                continue;
            }
            match line.split_once(": ") {
                Some((key, value)) if FIELDS.contains(&key) => {
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(SiweError::Malformed(format!("`{key}` appears twice")));
                    }
                    fields.push((key, value));
                }
                _ if fields.is_empty() && statement.is_none() => {
                    statement = Some(line.to_owned());
                }
                _ => return Err(SiweError::Malformed(format!("unexpected line {line:?}"))),
            }
        }
        let field = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let required = |key: &'static str| {
            field(key).ok_or_else(|| SiweError::Malformed(format!("`{key}` is missing")))
        };
        let time = |key: &'static str, v: &str| {
            Timestamp::parse(v).map_err(|e| SiweError::Malformed(format!("`{key}`: {e}")))
        };
        let version = required("Version")?;
        if version != "1" {
            return Err(SiweError::Malformed(format!("version {version} is not 1")));
        }
        let nonce = required("Nonce")?;
        if nonce.len() < 8 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("the nonce is not 8 or more letters and digits"));
        }
        Ok(SiweMessage {
            domain: domain.to_owned(),
            address,
            statement,
            uri: required("URI")?.to_owned(),
            version: version.to_owned(),
            chain_id: required("Chain ID")?
                .parse()
                .map_err(|_| bad("`Chain ID` is not a number"))?,
            nonce: nonce.to_owned(),
            issued_at: time("Issued At", required("Issued At")?)?,
            expiration_time: field("Expiration Time")
                .map(|v| time("Expiration Time", v))
                .transpose()?,
            not_before: field("Not Before")
                .map(|v| time("Not Before", v))
                .transpose()?,
            request_id: field("Request ID").map(str::to_owned),
            resources,
        })
    }

    /// Holds the message to the server's expectations at `now` (unix seconds): one of its
    /// `domains`, recently issued, not expired, valid already.
    pub fn check(&self, domains: &[String], now: i64) -> Result<(), SiweError> {
        if !domains.iter().any(|d| d.eq_ignore_ascii_case(&self.domain)) {
            return Err(SiweError::WrongDomain {
                got: self.domain.clone(),
                expected: domains.join(" or "),
            });
        }
        let issued = self.issued_at.unix_seconds();
        if issued > now + CLOCK_SKEW_SECS || now - issued > MAX_MESSAGE_AGE_SECS {
            return Err(SiweError::Stale);
        }
        if self
            .expiration_time
            .as_ref()
            .is_some_and(|t| t.unix_seconds() <= now)
        {
            return Err(SiweError::Expired);
        }
        if self
            .not_before
            .as_ref()
            .is_some_and(|t| t.unix_seconds() > now + CLOCK_SKEW_SECS)
        {
            return Err(SiweError::NotYetValid);
        }
        Ok(())
    }
}

const FIELDS: [&str; 8] = [
    "URI",
    "Version",
    "Chain ID",
    "Nonce",
    "Issued At",
    "Expiration Time",
    "Not Before",
    "Request ID",
];

/// The EIP-191 hash `personal_sign` signs: keccak256 of the prefixed message.
pub fn personal_message_hash(message: &str) -> [u8; 32] {
    let mut h = Keccak256::new();
    h.update(format!("\x19Ethereum Signed Message:\n{}", message.len()).as_bytes());
    h.update(message.as_bytes());
    h.finalize().into()
}

/// The address whose key made `signature` (`0x` + 65 bytes: r, s, v with v 27/28 or 0/1)
/// over `message` under EIP-191. High-s signatures are refused, as Ethereum does.
pub fn recover_signer(message: &str, signature: &str) -> Result<WalletAddress, SiweError> {
    let hex = signature
        .strip_prefix("0x")
        .ok_or(SiweError::BadSignatureEncoding)?;
    if hex.len() != 130 {
        return Err(SiweError::BadSignatureEncoding);
    }
    let mut bytes = [0u8; 65];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| SiweError::BadSignatureEncoding)?;
        bytes[i] = u8::from_str_radix(s, 16).map_err(|_| SiweError::BadSignatureEncoding)?;
    }
    let v = match bytes[64] {
        27 | 28 => bytes[64] - 27,
        0 | 1 => bytes[64],
        _ => return Err(SiweError::BadSignature),
    };
    let sig = Signature::from_slice(&bytes[..64]).map_err(|_| SiweError::BadSignature)?;
    if sig.normalize_s().is_some() {
        // Not in low-s form: a malleated copy of a signature.
        return Err(SiweError::BadSignature);
    }
    let recid = RecoveryId::from_byte(v).ok_or(SiweError::BadSignature)?;
    let key = VerifyingKey::recover_from_prehash(&personal_message_hash(message), &sig, recid)
        .map_err(|_| SiweError::BadSignature)?;
    Ok(address_of(&key))
}

/// The Ethereum address of a public key: the last 20 bytes of keccak256 of its uncompressed
/// coordinates.
pub fn address_of(key: &VerifyingKey) -> WalletAddress {
    let point = key.to_encoded_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    let mut a = [0u8; 20];
    a.copy_from_slice(&hash[12..]);
    WalletAddress::from_bytes(a)
}

/// Verifies a sign-in: the message parses, the signature is the claimed address's, and the
/// message meets [`SiweMessage::check`]. The nonce is the caller's to take.
pub fn verify_sign_in(
    message: &str,
    signature: &str,
    domains: &[String],
    now: i64,
) -> Result<SiweMessage, SiweError> {
    let msg = SiweMessage::parse(message)?;
    let signer = recover_signer(message, signature)?;
    if signer != msg.address {
        return Err(SiweError::WrongSigner {
            signer: signer.to_checksum(),
            claimed: msg.address.to_checksum(),
        });
    }
    msg.check(domains, now)?;
    Ok(msg)
}

/// A wallet's signing key: signs sign-in messages the way `personal_sign` does. The key never
/// leaves this value and is not shown by `Debug`.
pub struct Wallet(SigningKey);

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wallet({})", self.address().to_checksum())
    }
}

impl Wallet {
    /// A wallet from a 32-byte secret (any value below the curve order except zero).
    pub fn from_secret(secret: [u8; 32]) -> Option<Self> {
        SigningKey::from_bytes(&secret.into()).ok().map(Wallet)
    }

    /// A wallet from its private key as wallets export it: 64 hex digits, `0x` optional,
    /// surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self, SiweError> {
        let t = text.trim();
        let hex = t.strip_prefix("0x").unwrap_or(t);
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(SiweError::BadPrivateKey);
        }
        let mut secret = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).map_err(|_| SiweError::BadPrivateKey)?;
            secret[i] = u8::from_str_radix(s, 16).map_err(|_| SiweError::BadPrivateKey)?;
        }
        Self::from_secret(secret).ok_or(SiweError::BadPrivateKey)
    }

    pub fn address(&self) -> WalletAddress {
        address_of(self.0.verifying_key())
    }

    /// `personal_sign(message)`: `0x` + r, s (low-s), v (27/28).
    pub fn sign(&self, message: &str) -> Result<String, SiweError> {
        let (sig, recid) = self
            .0
            .sign_prehash_recoverable(&personal_message_hash(message))
            .map_err(|_| SiweError::Signing)?;
        let mut out = String::with_capacity(132);
        out.push_str("0x");
        for b in sig.to_bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out.push_str(&format!("{:02x}", 27 + recid.to_byte()));
        Ok(out)
    }
}

/// The EIP-4361 message a client asks a wallet to sign to sign in to the server at `domain`
/// (its host and port) whose URL is `uri`, with a nonce from `/auth/nonce`, issued at
/// `issued_at` (RFC 3339).
pub fn sign_in_message(
    domain: &str,
    uri: &str,
    address: &WalletAddress,
    nonce: &str,
    issued_at: &str,
) -> String {
    format!(
        "{domain} wants you to sign in with your Ethereum account:\n{}\n\nSign in to vmfleet.\n\nURI: {uri}\nVersion: 1\nChain ID: 1\nNonce: {nonce}\nIssued At: {issued_at}",
        address.to_checksum()
    )
}

/// Test helpers: a wallet that signs like `personal_sign`, and the message a wallet shows.
pub mod testing {
    use vmfleet_core::WalletAddress;

    /// A throwaway wallet.
    pub use super::Wallet as TestWallet;

    /// An EIP-4361 message as wallets format it.
    pub fn message(domain: &str, address: &WalletAddress, nonce: &str, issued_at: &str) -> String {
        super::sign_in_message(
            domain,
            &format!("http://{domain}"),
            address,
            nonce,
            issued_at,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TestWallet, message};
    use super::*;

    const NOW: i64 = 1_763_900_000; // 2025-11-23T12:13:20Z
    const ISSUED: &str = "2025-11-23T12:12:00Z";

    fn wallet() -> TestWallet {
        TestWallet::from_secret([7u8; 32]).unwrap()
    }

    fn domains() -> Vec<String> {
        vec!["vmfleet.example".to_owned()]
    }

    #[test]
    fn a_signature_recovers_its_address() {
        // Hardhat's well-known account #0: its key and its address.
        let key = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        let secret: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&key[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let hardhat = TestWallet::from_secret(secret.try_into().unwrap()).unwrap();
        assert_eq!(
            hardhat.address().to_checksum(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        // EIP-191: keccak256("\x19Ethereum Signed Message:\n5hello").
        let h = personal_message_hash("hello");
        assert_eq!(
            h.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "50b2c43fd39106bafbba0da34fc430e1f91e3c96ea2acee2bc34119f92b37750"
        );
        let w = wallet();
        let s = w.sign("hello").unwrap();
        assert_eq!(recover_signer("hello", &s).unwrap(), w.address());
        assert_ne!(recover_signer("hellO", &s).unwrap(), w.address());
    }

    #[test]
    fn a_wallet_reads_its_key_as_hex_and_refuses_anything_else() {
        let key = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        for text in [key.to_owned(), format!("0x{key}\n"), format!("  {key}  ")] {
            let w = Wallet::from_hex(&text).unwrap();
            assert_eq!(
                w.address().to_checksum(),
                "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            );
        }
        let zero = "0".repeat(64);
        let order = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141";
        for bad in [
            "",
            "0x",
            &key[..63],
            &format!("{key}00"),
            &zero,
            order,
            &"g".repeat(64),
            &"é".repeat(32),
        ] {
            assert_eq!(
                Wallet::from_hex(bad).unwrap_err(),
                SiweError::BadPrivateKey,
                "{bad}"
            );
        }
        let w = Wallet::from_hex(key).unwrap();
        assert!(
            !format!("{w:?}").contains(&key[..16]),
            "Debug never shows the key"
        );
        let text = sign_in_message("h:1", "http://h:1", &w.address(), "abcdef123456", ISSUED);
        assert_eq!(
            recover_signer(&text, &w.sign(&text).unwrap()).unwrap(),
            w.address()
        );
    }

    #[test]
    fn a_signed_message_verifies_and_tampering_does_not() {
        let w = wallet();
        let text = message("vmfleet.example", &w.address(), "abcdef123456", ISSUED);
        let sig = w.sign(&text).unwrap();
        let m = verify_sign_in(&text, &sig, &domains(), NOW).unwrap();
        assert_eq!(m.address, w.address());
        assert_eq!(m.nonce, "abcdef123456");
        assert_eq!(m.statement.as_deref(), Some("Sign in to vmfleet."));

        // Another wallet's signature over the same text.
        let other = TestWallet::from_secret([9u8; 32]).unwrap();
        let forged = other.sign(&text).unwrap();
        assert!(matches!(
            verify_sign_in(&text, &forged, &domains(), NOW),
            Err(SiweError::WrongSigner { .. })
        ));
        // The text changed after signing.
        let changed = text.replace("Chain ID: 1", "Chain ID: 5");
        assert!(verify_sign_in(&changed, &sig, &domains(), NOW).is_err());
        // Wrong domain, too old, from the future.
        assert!(matches!(
            verify_sign_in(&text, &sig, &["evil.example".into()], NOW),
            Err(SiweError::WrongDomain { .. })
        ));
        assert_eq!(
            verify_sign_in(&text, &sig, &domains(), NOW + 600).unwrap_err(),
            SiweError::Stale
        );
        assert_eq!(
            verify_sign_in(&text, &sig, &domains(), NOW - 600).unwrap_err(),
            SiweError::Stale
        );
        // A malleated (high-s) copy of the signature.
        let mut bytes: Vec<u8> = (0..65)
            .map(|i| u8::from_str_radix(&sig[2 + 2 * i..4 + 2 * i], 16).unwrap())
            .collect();
        let s = Signature::from_slice(&bytes[..64]).unwrap();
        let (r, s_) = s.split_scalars();
        let high = Signature::from_scalars(r, -*s_).unwrap();
        bytes[..64].copy_from_slice(&high.to_bytes());
        bytes[64] ^= 1;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            verify_sign_in(&text, &format!("0x{hex}"), &domains(), NOW).unwrap_err(),
            SiweError::BadSignature
        );
    }

    #[test]
    fn expiry_and_not_before() {
        let w = wallet();
        let base = message("vmfleet.example", &w.address(), "abcdef123456", ISSUED);
        let expired = format!("{base}\nExpiration Time: 2025-11-23T12:13:00Z");
        assert_eq!(
            SiweMessage::parse(&expired).unwrap().check(&domains(), NOW),
            Err(SiweError::Expired)
        );
        let later = format!("{base}\nNot Before: 2025-11-23T13:00:00Z");
        assert_eq!(
            SiweMessage::parse(&later).unwrap().check(&domains(), NOW),
            Err(SiweError::NotYetValid)
        );
        let with_resources = format!("{base}\nRequest ID: 42\nResources:\n- https://a.example/x");
        let m = SiweMessage::parse(&with_resources).unwrap();
        assert_eq!(m.resources, vec!["https://a.example/x".to_owned()]);
        assert_eq!(m.request_id.as_deref(), Some("42"));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let w = wallet();
        let good = message("vmfleet.example", &w.address(), "abcdef123456", ISSUED);
        for bad in [
            String::new(),
            good.replace(" wants you to sign in", " would like you to sign in"),
            good.replace("Version: 1", "Version: 2"),
            good.replace("Nonce: abcdef123456", "Nonce: short"),
            good.replace("Nonce: abcdef123456", "Nonce: has-dashes-in-it"),
            good.replace("\nURI: http://vmfleet.example", ""),
            good.replace("Issued At: ", "Issued At: yesterday "),
            format!("{good}\nNonce: abcdef123456"),
            format!("{good}\nSurprise: field"),
        ] {
            assert!(SiweMessage::parse(&bad).is_err(), "{bad:?}");
        }
        for sig in ["", "0x", "0x00", &format!("0x{}", "zz".repeat(65))] {
            assert!(recover_signer(&good, sig).is_err());
        }
    }
}
