//! Payload encryption at rest: AES-256-GCM with a random 96-bit nonce per row, under the key
//! ring's active key; the row stores the key id so keys can rotate.
//!
//! Sealed layout: `0x01 ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`. The event id is the
//! associated data, so a sealed payload moved to another row does not decrypt.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use uuid::Uuid;

use crate::error::Error;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// AES-256-GCM keys by id: one active key seals new rows; every key in the ring opens rows
/// sealed under it.
///
/// Rotation: build the ring with the new key active and the old ones added with
/// [`KeyRing::with_old_key`]; once no `PENDING` row carries an old key id (see
/// [`Outbox::rows`](super::Outbox::rows)), drop it.
///
/// ```
/// use eventbus::outbox::KeyRing;
/// let ring = KeyRing::new("2026-02", &[7u8; 32])?.with_old_key("2026-01", &[1u8; 32])?;
/// assert_eq!(ring.active_key_id(), "2026-02");
/// assert!(ring.contains("2026-01"));
/// # Ok::<(), eventbus::Error>(())
/// ```
#[derive(Clone)]
pub struct KeyRing {
    active: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("keys", &ids)
            .finish()
    }
}

impl KeyRing {
    /// A ring whose active key is `key` (32 bytes) under `id` (1 to 64 printable ASCII
    /// characters, stored in each row).
    pub fn new(id: impl Into<String>, key: &[u8]) -> Result<Self, Error> {
        let id = id.into();
        let cipher = cipher(&id, key)?;
        Ok(KeyRing {
            keys: HashMap::from([(id.clone(), cipher)]),
            active: id,
        })
    }

    /// Adds a key that only decrypts (rows sealed before a rotation).
    pub fn with_old_key(mut self, id: impl Into<String>, key: &[u8]) -> Result<Self, Error> {
        let id = id.into();
        if id == self.active {
            return Err(Error::config(
                "outbox.encryption.key_id",
                format!("`{id}` is already the active key"),
            ));
        }
        let cipher = cipher(&id, key)?;
        self.keys.insert(id, cipher);
        Ok(self)
    }

    /// Id of the key sealing new rows.
    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    /// Whether the ring holds key `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Seals `plaintext` for event `event_id` under the active key; returns the key id and the
    /// sealed bytes.
    pub(crate) fn seal(&self, plaintext: &[u8], event_id: Uuid) -> Result<(&str, Vec<u8>), Error> {
        let cipher = self.keys.get(&self.active).ok_or_else(|| {
            Error::config(
                "outbox.encryption.key_id",
                "the active key is not in the ring",
            )
        })?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: event_id.as_bytes(),
                },
            )
            .map_err(|_| {
                Error::backend(
                    "outbox",
                    "encrypting a payload",
                    "AES-GCM encryption failed",
                )
            })?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok((&self.active, out))
    }

    /// Opens a payload sealed under key `key_id` for event `event_id`. The error is a reason
    /// for the row's `last_error`.
    pub(crate) fn open(
        &self,
        key_id: &str,
        sealed: &[u8],
        event_id: Uuid,
    ) -> Result<Vec<u8>, String> {
        let cipher = self
            .keys
            .get(key_id)
            .ok_or_else(|| format!("cannot decrypt: key id `{key_id}` is not in the key ring"))?;
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
            return Err(format!(
                "cannot decrypt: sealed payload of {} bytes has an unknown layout",
                sealed.len()
            ));
        }
        let nonce = Nonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: event_id.as_bytes(),
                },
            )
            .map_err(|_| format!("cannot decrypt: authentication failed under key `{key_id}`"))
    }
}

fn cipher(id: &str, key: &[u8]) -> Result<Aes256Gcm, Error> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::config(
            "outbox.encryption.key_id",
            format!("`{id}` must be 1 to 64 printable ASCII characters"),
        ));
    }
    Aes256Gcm::new_from_slice(key).map_err(|_| {
        Error::config(
            "outbox.encryption.key",
            format!("key `{id}` is {} bytes; AES-256-GCM needs 32", key.len()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rotation() {
        let id = Uuid::now_v7();
        let a = KeyRing::new("a", &[1; 32]).unwrap();
        let (kid, sealed) = a.seal(b"secret email", id).unwrap();
        assert_eq!(kid, "a");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let (_, again) = a.seal(b"secret email", id).unwrap();
        assert_ne!(sealed, again, "fresh nonce per seal");

        let b = KeyRing::new("b", &[2; 32])
            .unwrap()
            .with_old_key("a", &[1; 32])
            .unwrap();
        assert_eq!(b.open("a", &sealed, id).unwrap(), b"secret email");
        let (kid, sealed_b) = b.seal(b"new", id).unwrap();
        assert_eq!(kid, "b");
        assert_eq!(b.open("b", &sealed_b, id).unwrap(), b"new");
        assert!(a
            .open("b", &sealed_b, id)
            .unwrap_err()
            .contains("not in the key ring"));
    }

    #[test]
    fn tampering_and_moving_rows_fail() {
        let ring = KeyRing::new("k", &[9; 32]).unwrap();
        let id = Uuid::now_v7();
        let (_, mut sealed) = ring.seal(b"payload", id).unwrap();
        assert!(
            ring.open("k", &sealed, Uuid::now_v7()).is_err(),
            "other row"
        );
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(ring
            .open("k", &sealed, id)
            .unwrap_err()
            .contains("authentication"));
        assert!(ring.open("k", b"short", id).unwrap_err().contains("layout"));
    }

    #[test]
    fn bad_keys_name_the_setting() {
        let err = KeyRing::new("k", &[0; 16]).unwrap_err().to_string();
        assert!(
            err.contains("outbox.encryption.key") && err.contains("16 bytes"),
            "{err}"
        );
        let err = KeyRing::new("", &[0; 32]).unwrap_err().to_string();
        assert!(err.contains("outbox.encryption.key_id"), "{err}");
        let err = KeyRing::new("k", &[0; 32])
            .unwrap()
            .with_old_key("k", &[1; 32])
            .unwrap_err()
            .to_string();
        assert!(err.contains("already the active key"), "{err}");
    }
}
