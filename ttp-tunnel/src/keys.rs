//! Keys as people handle them: base64 of 32 bytes, like WireGuard's, so `ttp tunnel
//! genkey | ttp tunnel pubkey` works the way `wg genkey | wg pubkey` does.

use base64::{engine::general_purpose::STANDARD, Engine};
use thiserror::Error;

use super::handshake::Identity;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not base64: {0}")]
    Base64(String),
    #[error("a key is 32 bytes (44 base64 characters), this is {0} bytes")]
    Length(usize),
}

pub fn encode(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

pub fn decode(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|e| KeyError::Base64(e.to_string()))?;
    bytes.as_slice().try_into().map_err(|_| KeyError::Length(bytes.len()))
}

/// The identity (private and public key) a private key stands for.
pub fn identity(private: [u8; 32]) -> Identity {
    let secret = x25519_dalek::StaticSecret::from(private);
    let public = x25519_dalek::PublicKey::from(&secret);
    Identity { private: secret.to_bytes(), public: public.to_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_the_public_key_matches_the_handshakes() {
        let id = Identity::generate().unwrap();
        let text = encode(&id.private);
        assert_eq!(text.len(), 44);
        let back = identity(decode(&text).unwrap());
        assert_eq!(back.public, id.public, "x25519 and snow agree on the public key");
        assert_eq!(decode("AAAA"), Err(KeyError::Length(3)));
        assert!(matches!(decode("not base64!"), Err(KeyError::Base64(_))));
    }
}
