//! Signed membership: what the operator signs, and how a node checks it.
//!
//! The signature covers a fixed binary encoding of the document's fields, not its JSON, so
//! that field order, whitespace or escaping never change what is verified:
//!
//! ```text
//! "sofaregistry membership v1\n" || epoch (u64 BE)
//!   || count(members) (u32 BE) || for each: len (u32 BE) || UTF-8 bytes
//!   || count(leaving) (u32 BE) || for each: len (u32 BE) || UTF-8 bytes
//!   [ || count(ids) (u32 BE) || for each, by address: address, identity (each as
//!        len (u32 BE) || UTF-8 bytes) ]           only when the document has ring ids
//! ```
//!
//! (Length prefixes and counts make the encoding unambiguous: a document without ids never
//! shares its payload with one that has them.)
//!
//! A document travels as JSON with `"signature": base64(64 signature bytes)`. Keys are
//! given as base64 of their 32 raw bytes: the public key to nodes (`--membership-key`),
//! the private seed only to the operator (a Secret it owns, one key per cluster, so a
//! document of one cluster never verifies in another). Verification is strict (no
//! malleable signatures, no weak keys).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use std::collections::BTreeMap;

/// Domain separation: these bytes are never a valid payload of anything else we sign.
const PAYLOAD_PREFIX: &[u8] = b"sofaregistry membership v1\n";

/// The fields of a membership document that its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct DocumentFields<'a> {
    pub epoch: u64,
    pub members: &'a [String],
    pub leaving: &'a [String],
    /// Ring identities, address → identity: they place members on the ring, so they are
    /// signed like the members themselves.
    pub ids: &'a BTreeMap<String, String>,
}

impl DocumentFields<'_> {
    /// The exact bytes that are signed.
    pub fn payload(&self) -> Vec<u8> {
        let strings = self.members.iter().chain(self.leaving).map(|s| s.len() + 4);
        let mut out = Vec::with_capacity(PAYLOAD_PREFIX.len() + 16 + strings.sum::<usize>());
        out.extend_from_slice(PAYLOAD_PREFIX);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        for list in [self.members, self.leaving] {
            out.extend_from_slice(&len_u32(list.len()).to_be_bytes());
            for s in list {
                put_string(&mut out, s);
            }
        }
        if !self.ids.is_empty() {
            out.extend_from_slice(&len_u32(self.ids.len()).to_be_bytes());
            for (addr, id) in self.ids {
                put_string(&mut out, addr);
                put_string(&mut out, id);
            }
        }
        out
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&len_u32(s.len()).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Lengths beyond u32 cannot occur in a bounded document; saturate rather than wrap so two
/// different documents never share a payload.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not base64: {0}")]
    NotBase64(String),
    #[error("must be {want} bytes (base64 of the raw key), got {got}")]
    WrongLength { want: usize, got: usize },
    #[error("not a usable Ed25519 public key")]
    Unusable,
    #[error("cannot read {path}: {error}")]
    File { path: String, error: String },
}

/// Why a document's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the document carries no signature; this node adopts only membership signed by the operator")]
    Missing,
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    #[error("the signature does not verify with this node's membership key")]
    Invalid,
}

fn decode_fixed<const N: usize>(text: &str) -> Result<[u8; N], KeyError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| KeyError::NotBase64(e.to_string()))?;
    let got = bytes.len();
    bytes
        .try_into()
        .map_err(|_| KeyError::WrongLength { want: N, got })
}

/// The operator's private signing key for one cluster.
pub struct MembershipSigner(SigningKey);

impl MembershipSigner {
    /// A new random key (the seed from the thread's CSPRNG, seeded by the OS).
    pub fn generate() -> MembershipSigner {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        MembershipSigner(SigningKey::from_bytes(&seed))
    }

    /// The key from base64 of its 32-byte seed (as [`Self::seed_base64`] wrote it).
    pub fn from_seed_base64(text: &str) -> Result<MembershipSigner, KeyError> {
        Ok(MembershipSigner(SigningKey::from_bytes(
            &decode_fixed::<32>(text)?,
        )))
    }

    /// Base64 of the 32-byte seed: what the operator's Secret stores.
    pub fn seed_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    /// The public key nodes verify with.
    pub fn public_key(&self) -> MembershipKey {
        MembershipKey(self.0.verifying_key())
    }

    /// Base64 of the signature over `doc`.
    pub fn sign(&self, doc: DocumentFields<'_>) -> String {
        STANDARD.encode(self.0.sign(&doc.payload()).to_bytes())
    }
}

impl std::fmt::Debug for MembershipSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        write!(f, "MembershipSigner(public {})", self.public_key())
    }
}

/// The public key a node verifies membership documents with.
#[derive(Clone, PartialEq, Eq)]
pub struct MembershipKey(VerifyingKey);

impl MembershipKey {
    /// Base64 of the 32 raw public-key bytes.
    pub fn parse(text: &str) -> Result<MembershipKey, KeyError> {
        let key =
            VerifyingKey::from_bytes(&decode_fixed::<32>(text)?).map_err(|_| KeyError::Unusable)?;
        if key.is_weak() {
            return Err(KeyError::Unusable);
        }
        Ok(MembershipKey(key))
    }

    /// The `--membership-key` argument: the key itself, or `@FILE` naming a file that holds
    /// it (surrounding whitespace ignored).
    pub fn from_arg(arg: &str) -> Result<MembershipKey, KeyError> {
        match arg.strip_prefix('@') {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| KeyError::File {
                    path: path.to_owned(),
                    error: e.to_string(),
                })?;
                MembershipKey::parse(&text)
            }
            None => MembershipKey::parse(arg),
        }
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    /// Checks that `signature` (base64, as the document carries it) signs `doc` with this
    /// key.
    pub fn verify(
        &self,
        doc: DocumentFields<'_>,
        signature: Option<&str>,
    ) -> Result<(), SignatureError> {
        let text = signature.ok_or(SignatureError::Missing)?;
        let bytes =
            decode_fixed::<64>(text).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let signature = Signature::from_bytes(&bytes);
        self.0
            .verify_strict(&doc.payload(), &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl std::fmt::Display for MembershipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::fmt::Debug for MembershipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MembershipKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    static NO_IDS: BTreeMap<String, String> = BTreeMap::new();

    fn fields<'a>(epoch: u64, members: &'a [String], leaving: &'a [String]) -> DocumentFields<'a> {
        DocumentFields {
            epoch,
            members,
            leaving,
            ids: &NO_IDS,
        }
    }

    #[test]
    fn ring_identities_are_signed() {
        let signer = MembershipSigner::generate();
        let key = signer.public_key();
        let members = strings(&["10.0.0.1:9622", "10.0.0.2:9622"]);
        let ids: BTreeMap<String, String> = [("10.0.0.1:9622".into(), "reg-data-0".into())].into();
        let with = |ids| DocumentFields {
            ids,
            ..fields(4, &members, &[])
        };
        let sig = signer.sign(with(&ids));
        assert_eq!(key.verify(with(&ids), Some(&sig)), Ok(()));
        // Ids added to, dropped from or changed in a signed document.
        assert_eq!(
            key.verify(with(&NO_IDS), Some(&sig)),
            Err(SignatureError::Invalid)
        );
        let plain = signer.sign(fields(4, &members, &[]));
        assert_eq!(
            key.verify(with(&ids), Some(&plain)),
            Err(SignatureError::Invalid)
        );
        let other: BTreeMap<String, String> =
            [("10.0.0.1:9622".into(), "reg-data-1".into())].into();
        assert_eq!(
            key.verify(with(&other), Some(&sig)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn a_signed_document_verifies_and_every_field_is_covered() {
        let signer = MembershipSigner::generate();
        let key = signer.public_key();
        let members = strings(&["10.0.0.1:9622", "10.0.0.2:9622"]);
        let leaving = strings(&["10.0.0.3:9622"]);
        let sig = signer.sign(fields(7, &members, &leaving));
        assert_eq!(
            key.verify(fields(7, &members, &leaving), Some(&sig)),
            Ok(())
        );

        let invalid = Err(SignatureError::Invalid);
        assert_eq!(
            key.verify(fields(8, &members, &leaving), Some(&sig)),
            invalid
        );
        assert_eq!(
            key.verify(fields(u64::MAX, &members, &leaving), Some(&sig)),
            invalid
        );
        assert_eq!(
            key.verify(fields(7, &members[..1], &leaving), Some(&sig)),
            invalid
        );
        assert_eq!(key.verify(fields(7, &members, &[]), Some(&sig)), invalid);
        // Moving a node from leaving to members is a different document.
        let all = strings(&["10.0.0.1:9622", "10.0.0.2:9622", "10.0.0.3:9622"]);
        assert_eq!(key.verify(fields(7, &all, &[]), Some(&sig)), invalid);
        let reordered = strings(&["10.0.0.2:9622", "10.0.0.1:9622"]);
        assert_eq!(
            key.verify(fields(7, &reordered, &leaving), Some(&sig)),
            invalid
        );
    }

    #[test]
    fn strings_cannot_run_into_each_other() {
        let a = fields(1, &["ab".to_owned(), "c".to_owned()], &[]).payload();
        let b = fields(1, &["a".to_owned(), "bc".to_owned()], &[]).payload();
        assert_ne!(a, b);
        let members = ["a".to_owned()];
        let c = fields(1, &members, &[]).payload();
        let d = fields(1, &[], &members).payload();
        assert_ne!(c, d);
    }

    #[test]
    fn missing_malformed_and_foreign_signatures_are_refused() {
        let signer = MembershipSigner::generate();
        let other = MembershipSigner::generate();
        let members = strings(&["a:1"]);
        let doc = fields(3, &members, &[]);
        let key = signer.public_key();
        assert_eq!(key.verify(doc, None), Err(SignatureError::Missing));
        assert!(matches!(
            key.verify(doc, Some("not base64!")),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            key.verify(doc, Some(&STANDARD.encode([0u8; 63]))),
            Err(SignatureError::Malformed(_))
        ));
        assert_eq!(
            key.verify(doc, Some(&STANDARD.encode([0u8; 64]))),
            Err(SignatureError::Invalid)
        );
        // Signed by another cluster's key.
        assert_eq!(
            key.verify(doc, Some(&other.sign(doc))),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let signer = MembershipSigner::generate();
        let again = MembershipSigner::from_seed_base64(&signer.seed_base64()).unwrap();
        assert_eq!(signer.public_key(), again.public_key());
        let text = signer.public_key().to_base64();
        assert_eq!(MembershipKey::parse(&text).unwrap(), signer.public_key());
        assert_eq!(
            MembershipKey::parse(&format!("  {text}\n")).unwrap(),
            signer.public_key()
        );
        assert!(!format!("{signer:?}").contains(&signer.seed_base64()));
    }

    #[test]
    fn the_key_argument_is_the_key_or_a_file() {
        let signer = MembershipSigner::generate();
        let text = signer.public_key().to_base64();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("membership.pub");
        std::fs::write(&path, format!("{text}\n")).unwrap();
        let from_file = MembershipKey::from_arg(&format!("@{}", path.display())).unwrap();
        assert_eq!(from_file, signer.public_key());
        assert_eq!(MembershipKey::from_arg(&text).unwrap(), signer.public_key());
        assert!(matches!(
            MembershipKey::from_arg(&format!("@{}/absent", dir.path().display())),
            Err(KeyError::File { .. })
        ));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        assert!(matches!(
            MembershipKey::parse("%%%"),
            Err(KeyError::NotBase64(_))
        ));
        assert_eq!(
            MembershipKey::parse(&STANDARD.encode([1u8; 31])),
            Err(KeyError::WrongLength { want: 32, got: 31 })
        );
        // The identity point: a weak key that many signatures would verify under.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            MembershipKey::parse(&STANDARD.encode(identity)),
            Err(KeyError::Unusable)
        );
    }
}
