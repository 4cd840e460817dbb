//! Context-server authentication at registration.
//!
//! The director's Welcome carries a fresh 16-byte challenge; the context
//! server answers in Register with
//! `HMAC-SHA256(secret, "elko-register-v1" || challenge || u16 LE len(provider_id) || provider_id || u64 LE epoch)`.
//! A recorded Register cannot be replayed on another connection (new
//! challenge), and nobody without the secret can join the pool.

use crate::secret::ClusterSecret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const DOMAIN: &[u8] = b"elko-register-v1";

fn mac(secret: &ClusterSecret) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    match Hmac::<Sha256>::new_from_slice(secret.key()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

fn feed(m: &mut Hmac<Sha256>, challenge: &[u8; 16], provider_id: &str, epoch: u64) {
    m.update(DOMAIN);
    m.update(challenge);
    m.update(&(provider_id.len() as u16).to_le_bytes());
    m.update(provider_id.as_bytes());
    m.update(&epoch.to_le_bytes());
}

/// The `auth` field of a Register.
pub fn register_proof(
    secret: &ClusterSecret,
    challenge: &[u8; 16],
    provider_id: &str,
    epoch: u64,
) -> [u8; 32] {
    let mut m = mac(secret);
    feed(&mut m, challenge, provider_id, epoch);
    m.finalize().into_bytes().into()
}

/// Check a Register's `auth` field in constant time.
pub fn verify_register(
    secret: &ClusterSecret,
    challenge: &[u8; 16],
    provider_id: &str,
    epoch: u64,
    proof: &[u8; 32],
) -> bool {
    let mut m = mac(secret);
    feed(&mut m, challenge, provider_id, epoch);
    m.verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_binds_every_input() {
        let s = ClusterSecret::from_bytes(vec![1; 32], "t").expect("secret");
        let other = ClusterSecret::from_bytes(vec![2; 32], "t").expect("secret");
        let ch = [9u8; 16];
        let p = register_proof(&s, &ch, "cd1", 5);
        assert!(verify_register(&s, &ch, "cd1", 5, &p));
        assert!(!verify_register(&other, &ch, "cd1", 5, &p));
        assert!(!verify_register(&s, &[8; 16], "cd1", 5, &p));
        assert!(!verify_register(&s, &ch, "cd2", 5, &p));
        assert!(!verify_register(&s, &ch, "cd1", 6, &p));
    }
}
