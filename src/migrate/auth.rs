//! The key proof of `--encrypt-key`: both sides hold the same 32-byte key; the source seals a
//! fixed token under a random nonce (XChaCha20-Poly1305, the packed streams' AEAD) and the
//! destination opens it. A wrong key is refused before anything is frozen; the key itself
//! never travels and is never logged.
//!
//! ```text
//!  proof = nonce (24 random bytes) | seal(key, nonce, TOKEN)   (TOKEN + 16-byte tag)
//! ```

use chacha20poly1305::aead::Aead;
use chacha20poly1305::XNonce;

use crate::pages::pack::PackKey;

const TOKEN: &[u8] = b"stasis migrate v1";
const NONCE: usize = 24;

/// The proof the source sends.
pub fn prove(key: &PackKey) -> Result<Vec<u8>, String> {
    let mut nonce = [0u8; NONCE];
    getrandom::fill(&mut nonce).map_err(|e| format!("random nonce: {e}"))?;
    let sealed = key
        .cipher()
        .encrypt(XNonce::from_slice(&nonce), TOKEN)
        .map_err(|_| "seal the key proof".to_string())?;
    let mut out = nonce.to_vec();
    out.extend(sealed);
    Ok(out)
}

/// Whether `proof` was made with `key`.
pub fn check(key: &PackKey, proof: &[u8]) -> bool {
    if proof.len() < NONCE {
        return false;
    }
    let (nonce, sealed) = proof.split_at(NONCE);
    matches!(key.cipher().decrypt(XNonce::from_slice(nonce), sealed), Ok(t) if t == TOKEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_key_passes() {
        let k = PackKey::from_bytes([7; 32]);
        let p = prove(&k).unwrap();
        assert!(check(&k, &p));
        assert!(!check(&PackKey::from_bytes([8; 32]), &p));
        assert!(!check(&k, &p[..10]));
        let mut t = p.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(!check(&k, &t));
    }
}
