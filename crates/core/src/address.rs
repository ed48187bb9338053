//! Ethereum wallet addresses, the identity of every vmfleet user.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest, Keccak256};

/// A 20-byte Ethereum address. Parsed from `0x` and 40 hex digits; a mixed-case input must carry
/// a valid EIP-55 checksum. Serialized in lowercase, as seed 002 writes owners; see
/// [`ChecksumAddress`] for the EIP-55 form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalletAddress([u8; 20]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("a wallet address must start with 0x")]
    MissingPrefix,
    #[error("a wallet address has 40 hex digits, not {0}")]
    BadLength(usize),
    #[error("a wallet address holds only hex digits")]
    NotHex,
    #[error("the wallet address's mixed-case EIP-55 checksum does not match")]
    BadChecksum,
}

impl WalletAddress {
    pub const fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or(AddressError::MissingPrefix)?;
        if hex.len() != 40 {
            return Err(AddressError::BadLength(hex.len()));
        }
        let mut bytes = [0u8; 20];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(AddressError::NotHex)?;
            let lo = hex_val(pair[1]).ok_or(AddressError::NotHex)?;
            bytes[i] = (hi << 4) | lo;
        }
        let addr = Self(bytes);
        let mixed = hex.bytes().any(|b| b.is_ascii_lowercase())
            && hex.bytes().any(|b| b.is_ascii_uppercase());
        if mixed && addr.to_checksum()[2..] != *hex {
            return Err(AddressError::BadChecksum);
        }
        Ok(addr)
    }

    /// The EIP-55 mixed-case checksum form, `0x` included.
    pub fn to_checksum(&self) -> String {
        let lower = self.lower_hex();
        let hash = Keccak256::digest(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
            out.push(if c.is_ascii_alphabetic() && nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            });
        }
        out
    }

    fn lower_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", self.lower_hex())
    }
}

impl fmt::Debug for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WalletAddress({self})")
    }
}

impl FromStr for WalletAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, AddressError> {
        Self::parse(s)
    }
}

impl Serialize for WalletAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WalletAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A [`WalletAddress`] that serializes in its EIP-55 checksum form (the sign-in response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChecksumAddress(pub WalletAddress);

impl Serialize for ChecksumAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_checksum())
    }
}

impl<'de> Deserialize<'de> for ChecksumAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        WalletAddress::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vectors of EIP-55 itself.
    const EIP55: [&str; 4] = [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ];

    #[test]
    fn eip55_vectors() {
        for s in EIP55 {
            let a = WalletAddress::parse(s).unwrap();
            assert_eq!(a.to_checksum(), s);
            assert_eq!(WalletAddress::parse(&s.to_lowercase()).unwrap(), a);
        }
    }

    #[test]
    fn bad_checksum_and_shapes() {
        let wrong = "0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        assert_eq!(WalletAddress::parse(wrong), Err(AddressError::BadChecksum));
        assert_eq!(
            WalletAddress::parse("1234"),
            Err(AddressError::MissingPrefix)
        );
        assert_eq!(
            WalletAddress::parse("0x1234"),
            Err(AddressError::BadLength(4))
        );
        assert_eq!(
            WalletAddress::parse("0x1234567890abcdef1234567890abcdef1234567g"),
            Err(AddressError::NotHex)
        );
    }

    #[test]
    fn serializes_lowercase() {
        let s = "\"0x1234567890abcdef1234567890abcdef12345678\"";
        let a: WalletAddress = serde_json::from_str(s).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), s);
    }
}
