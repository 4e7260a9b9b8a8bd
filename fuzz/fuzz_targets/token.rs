//! Endpoint tokens: `verify` on hostile text, and on hostile claims that
//! carry a valid MAC (signed here with the key file's known key), so the
//! base64, JSON and port-scope decoding behind the MAC is reached too.
#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ember_proxy::token::{TokenKey, MAX_TOKEN_LEN, MAX_TOKEN_LIFETIME_SECS};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const KEY: [u8; 32] = [7; 32];
const NOW: u64 = 1_767_225_600;

fn key() -> &'static TokenKey {
    static KEY_CELL: OnceLock<TokenKey> = OnceLock::new();
    KEY_CELL.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("token.key");
        std::fs::write(&path, KEY).expect("the key file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("the key file's mode");
        TokenKey::load_or_create(&path).expect("the key loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    if let Ok(text) = std::str::from_utf8(data) {
        // Without the MAC nothing may pass; the seeds carry none valid.
        assert!(
            key.verify(text, NOW).is_err(),
            "an unsigned token verified: {text:?}"
        );
    }

    // The input as the claims JSON of a correctly signed token.
    let mut token = URL_SAFE_NO_PAD.encode(data);
    let mut mac = Hmac::<Sha256>::new_from_slice(&KEY).expect("HMAC takes any key");
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
    let Ok(claims) = key.verify(&token, NOW) else {
        return;
    };
    assert!(token.len() <= MAX_TOKEN_LEN);
    assert!(NOW < claims.expires_at);
    assert!(claims.expires_at.saturating_sub(claims.issued_at) <= MAX_TOKEN_LIFETIME_SECS);
    // What verifies and mints again verifies to the same claims.
    if let Ok(again) = key.mint(&claims) {
        assert_eq!(key.verify(&again, NOW).ok(), Some(claims));
    }
});
