//! Membership documents (registry-types, registry-trust): any bytes either parse into a
//! document within the bounds, or are refused; a parsed document's signature verifies only
//! under the key that signed it, and a signed document survives a JSON round trip while
//! any change of what the signature covers breaks it. Nothing panics.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use registry_trust::MembershipSigner;
use registry_types::MembershipDoc;

fn signers() -> &'static (MembershipSigner, MembershipSigner) {
    static KEYS: OnceLock<(MembershipSigner, MembershipSigner)> = OnceLock::new();
    KEYS.get_or_init(|| (MembershipSigner::generate(), MembershipSigner::generate()))
}

fuzz_target!(|bytes: &[u8]| {
    let (signer, other) = signers();
    let key = signer.public_key();
    // A signature text of any form: refused unless it is the signer's.
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = registry_trust::MembershipKey::parse(text);
        let _ = registry_trust::MembershipKey::from_arg(text.trim_start_matches('@'));
    }
    let Ok(doc) = MembershipDoc::parse(bytes) else {
        return;
    };
    assert!(doc.epoch >= 1);
    assert!(doc.members.len() + doc.leaving.len() <= registry_types::MAX_MEMBERSHIP_NODES);
    // Whatever signature it came with, it is not the signer's (the fuzzer has no key).
    if doc.verify(&key).is_ok() {
        panic!("a document the fuzzer made verified: {doc:?}");
    }
    let signed = doc.clone().signed(signer);
    signed.verify(&key).expect("a signed document verifies");
    assert!(signed.verify(&other.public_key()).is_err());
    let text = serde_json::to_vec(&signed).expect("serializes");
    if text.len() > registry_types::MAX_MEMBERSHIP_BYTES {
        // The signature made it longer than a document may be.
        return;
    }
    let back = MembershipDoc::parse(&text).expect("a signed document parses again");
    back.verify(&key).expect("and still verifies");
    assert!(back.same_as(&signed));
    let mut bumped = back.clone();
    bumped.epoch = bumped.epoch.wrapping_add(1).max(1);
    if bumped.epoch != back.epoch {
        assert!(
            bumped.verify(&key).is_err(),
            "a changed epoch still verified"
        );
    }
});
