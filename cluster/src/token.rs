//! Reservation tokens.
//!
//! A director answers an enter request with a context server's address and a
//! token; the client presents the token to that context server. The context
//! server checks it locally — no round trip to the director — because the
//! token carries its claims and an HMAC-SHA256 tag under the cluster secret.
//!
//! Byte layout (opaque to clients; all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, 1 |
//! | 8 | nonce (random, the token's id) |
//! | 8 | issued at, ms since the Unix epoch |
//! | 8 | expires at, ms since the Unix epoch |
//! | 2 + n | context id length, context id |
//! | 2 + n | user length, user |
//! | 32 | HMAC-SHA256(secret, "elko-token-v1" \|\| all bytes above) |
//!
//! Single use is enforced by a [`ReplayGuard`] per context: a context lives
//! on exactly one loop of one context server, and a token is bound to one
//! context, so a replay can only ever reach the guard that saw the first use.

use crate::secret::ClusterSecret;
use elko_protocol::ErrorCode;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

const DOMAIN: &[u8] = b"elko-token-v1";
const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
const FIXED_LEN: usize = 1 + 8 + 8 + 8 + 2 + 2 + TAG_LEN;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub nonce: u64,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    pub context: String,
    pub user: String,
}

/// Why a token was refused. Each maps to one wire [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token signature does not verify (forged, corrupted, or from another cluster)")]
    Forged,
    #[error("token was issued for context {token_context:?}, presented for {presented:?}")]
    WrongContext {
        token_context: String,
        presented: String,
    },
    #[error("token was issued for user {token_user:?}, presented by {presented:?}")]
    WrongUser {
        token_user: String,
        presented: String,
    },
    #[error("token expired at {expired_at_ms} ms, now is {now_ms} ms: ask the director again")]
    Expired { expired_at_ms: u64, now_ms: u64 },
    #[error("token {nonce:016x} was already used")]
    Replayed { nonce: u64 },
}

impl TokenError {
    /// The error code sent to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Malformed(_) | TokenError::Forged => ErrorCode::TOKEN_INVALID,
            TokenError::WrongContext { .. } | TokenError::WrongUser { .. } => {
                ErrorCode::TOKEN_WRONG_CONTEXT
            }
            TokenError::Expired { .. } => ErrorCode::TOKEN_EXPIRED,
            TokenError::Replayed { .. } => ErrorCode::TOKEN_REPLAYED,
        }
    }
}

fn mac(secret: &ClusterSecret) -> Hmac<Sha256> {
    match Hmac::<Sha256>::new_from_slice(secret.key()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

/// Issues tokens (director side).
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    secret: ClusterSecret,
    ttl_ms: u64,
}

impl TokenIssuer {
    /// Tokens that live `ttl_ms` milliseconds.
    pub fn new(secret: ClusterSecret, ttl_ms: u64) -> Self {
        TokenIssuer { secret, ttl_ms }
    }

    /// Token lifetime in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// Issue a token for (`context`, `user`) at wall-clock time `now_ms`.
    pub fn issue(&self, context: &str, user: &str, now_ms: u64) -> (Vec<u8>, TokenClaims) {
        let mut nonce = [0u8; 8];
        if getrandom::fill(&mut nonce).is_err() {
            // No OS randomness: fall back to a value unique within this process.
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            nonce = (COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ^ now_ms.rotate_left(32))
            .to_le_bytes();
        }
        let claims = TokenClaims {
            nonce: u64::from_le_bytes(nonce),
            issued_at_ms: now_ms,
            expires_at_ms: now_ms + self.ttl_ms,
            context: context.to_string(),
            user: user.to_string(),
        };
        (self.encode(&claims), claims)
    }

    /// Encode and sign given claims (tests use this to craft expired tokens).
    pub fn encode(&self, c: &TokenClaims) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + c.context.len() + c.user.len());
        out.push(VERSION);
        out.extend_from_slice(&c.nonce.to_le_bytes());
        out.extend_from_slice(&c.issued_at_ms.to_le_bytes());
        out.extend_from_slice(&c.expires_at_ms.to_le_bytes());
        for s in [&c.context, &c.user] {
            let len = s.len().min(usize::from(u16::MAX));
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..len]);
        }
        let mut m = mac(&self.secret);
        m.update(DOMAIN);
        m.update(&out);
        out.extend_from_slice(&m.finalize().into_bytes());
        out
    }
}

/// Checks tokens (context-server side).
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    secret: ClusterSecret,
    /// Tolerated clock difference between director and context server.
    skew_ms: u64,
}

impl TokenVerifier {
    /// A verifier tolerating `skew_ms` of clock difference.
    pub fn new(secret: ClusterSecret, skew_ms: u64) -> Self {
        TokenVerifier { secret, skew_ms }
    }

    /// Check signature, binding and expiry (not single use: see [`ReplayGuard`]).
    pub fn verify(
        &self,
        token: &[u8],
        context: &str,
        user: &str,
        now_ms: u64,
    ) -> Result<TokenClaims, TokenError> {
        if token.len() < FIXED_LEN {
            return Err(TokenError::Malformed("shorter than the fixed fields"));
        }
        let (body, tag) = token.split_at(token.len() - TAG_LEN);
        let mut m = mac(&self.secret);
        m.update(DOMAIN);
        m.update(body);
        // Check the tag before parsing anything else: a forged token is
        // refused without its contents being trusted.
        m.verify_slice(tag).map_err(|_| TokenError::Forged)?;
        let claims = parse(body)?;
        if claims.context != context {
            return Err(TokenError::WrongContext {
                token_context: claims.context,
                presented: context.to_string(),
            });
        }
        if claims.user != user {
            return Err(TokenError::WrongUser {
                token_user: claims.user,
                presented: user.to_string(),
            });
        }
        if now_ms > claims.expires_at_ms.saturating_add(self.skew_ms) {
            return Err(TokenError::Expired {
                expired_at_ms: claims.expires_at_ms,
                now_ms,
            });
        }
        Ok(claims)
    }
}

fn parse(body: &[u8]) -> Result<TokenClaims, TokenError> {
    let mut r = body;
    let mut take = |n: usize| -> Result<&[u8], TokenError> {
        if r.len() < n {
            return Err(TokenError::Malformed("field runs past the end"));
        }
        let (a, b) = r.split_at(n);
        r = b;
        Ok(a)
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    if take(1)?[0] != VERSION {
        return Err(TokenError::Malformed("unknown token format version"));
    }
    let nonce = u64_at(take(8)?);
    let issued_at_ms = u64_at(take(8)?);
    let expires_at_ms = u64_at(take(8)?);
    let mut string = || -> Result<String, TokenError> {
        let l = take(2)?;
        let len = usize::from(u16::from_le_bytes([l[0], l[1]]));
        String::from_utf8(take(len)?.to_vec())
            .map_err(|_| TokenError::Malformed("string is not UTF-8"))
    };
    let context = string()?;
    let user = string()?;
    if !r.is_empty() {
        return Err(TokenError::Malformed("trailing bytes"));
    }
    Ok(TokenClaims {
        nonce,
        issued_at_ms,
        expires_at_ms,
        context,
        user,
    })
}

/// How long past its expiry a used nonce is still remembered (clock skew
/// between the director that issued a token and the server checking it).
const REPLAY_SLACK_MS: u64 = 60_000;

/// Remembers used token nonces until they expire.
///
/// Each check costs O(log n): nonces are forgotten in order of expiry from a
/// min-heap, a few at a time as checks come. (It used to scan the whole map
/// at every check once 4096 nonces were remembered, which is every check of
/// a busy server: 8000 clients entering within a token's lifetime made each
/// Enter walk thousands of entries.)
#[derive(Debug, Default)]
pub struct ReplayGuard {
    used: HashSet<u64>,
    /// (forget at, nonce), earliest first.
    expiries: BinaryHeap<Reverse<(u64, u64)>>,
}

impl ReplayGuard {
    /// Record a use of `claims`; refuse a second use.
    pub fn check_and_mark(&mut self, claims: &TokenClaims, now_ms: u64) -> Result<(), TokenError> {
        self.purge(now_ms);
        if !self.used.insert(claims.nonce) {
            return Err(TokenError::Replayed {
                nonce: claims.nonce,
            });
        }
        let forget_at = claims.expires_at_ms.saturating_add(REPLAY_SLACK_MS);
        self.expiries.push(Reverse((forget_at, claims.nonce)));
        Ok(())
    }

    /// Forget nonces whose tokens have expired (they fail the expiry check
    /// anyway), with a minute of slack for clock skew.
    pub fn purge(&mut self, now_ms: u64) {
        while let Some(&Reverse((forget_at, nonce))) = self.expiries.peek() {
            if forget_at >= now_ms {
                break;
            }
            self.expiries.pop();
            self.used.remove(&nonce);
        }
    }

    /// Whether the token with this nonce was already used (and not yet forgotten).
    pub fn seen(&self, nonce: u64) -> bool {
        self.used.contains(&nonce)
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TokenIssuer, TokenVerifier) {
        let s = ClusterSecret::from_bytes(vec![3; 32], "test").expect("secret");
        (
            TokenIssuer::new(s.clone(), 30_000),
            TokenVerifier::new(s, 0),
        )
    }

    #[test]
    fn valid_token_verifies_once() {
        let (i, v) = pair();
        let (tok, claims) = i.issue("room/1", "alice", 1_000);
        let got = v.verify(&tok, "room/1", "alice", 2_000).expect("valid");
        assert_eq!(got, claims);
        let mut g = ReplayGuard::default();
        assert!(!g.seen(claims.nonce));
        g.check_and_mark(&got, 2_000).expect("first use");
        assert!(g.seen(claims.nonce));
        assert_eq!(
            g.check_and_mark(&got, 2_001),
            Err(TokenError::Replayed {
                nonce: claims.nonce
            })
        );
    }

    #[test]
    fn every_attack_has_its_code() {
        let (i, v) = pair();
        let (tok, _) = i.issue("room/1", "alice", 1_000);
        let e = v
            .verify(&tok, "room/2", "alice", 2_000)
            .expect_err("wrong context");
        assert_eq!(e.code(), ErrorCode::TOKEN_WRONG_CONTEXT);
        let e = v
            .verify(&tok, "room/1", "bob", 2_000)
            .expect_err("wrong user");
        assert_eq!(e.code(), ErrorCode::TOKEN_WRONG_CONTEXT);
        let e = v
            .verify(&tok, "room/1", "alice", 31_001)
            .expect_err("expired");
        assert_eq!(
            e,
            TokenError::Expired {
                expired_at_ms: 31_000,
                now_ms: 31_001
            }
        );
        assert_eq!(e.code(), ErrorCode::TOKEN_EXPIRED);
        // Another cluster's secret.
        let other = TokenIssuer::new(
            ClusterSecret::from_bytes(vec![4; 32], "t").expect("s"),
            30_000,
        );
        let (forged, _) = other.issue("room/1", "alice", 1_000);
        assert_eq!(
            v.verify(&forged, "room/1", "alice", 2_000),
            Err(TokenError::Forged)
        );
        assert_eq!(
            v.verify(&[], "room/1", "alice", 2_000)
                .expect_err("empty")
                .code(),
            ErrorCode::TOKEN_INVALID
        );
    }

    #[test]
    fn any_bit_flip_is_refused() {
        let (i, v) = pair();
        let (tok, _) = i.issue("room/1", "alice", 1_000);
        for byte in 0..tok.len() {
            for bit in 0..8 {
                let mut t = tok.clone();
                t[byte] ^= 1 << bit;
                let e = v.verify(&t, "room/1", "alice", 2_000).expect_err("flipped");
                assert_eq!(e.code(), ErrorCode::TOKEN_INVALID, "byte {byte} bit {bit}");
            }
        }
        // Truncation at every length.
        for n in 0..tok.len() {
            assert!(v.verify(&tok[..n], "room/1", "alice", 2_000).is_err());
        }
    }

    #[test]
    fn guard_forgets_expired_nonces() {
        let (i, _) = pair();
        let mut g = ReplayGuard::default();
        for k in 0..10 {
            let (_, c) = i.issue("r", "u", k);
            g.check_and_mark(&c, k).expect("fresh");
        }
        assert_eq!(g.len(), 10);
        g.purge(1_000_000);
        assert!(g.is_empty());
    }

    #[test]
    fn nonces_are_forgotten_in_order_of_expiry_and_replays_refused_until_then() {
        let (i, _) = pair(); // tokens live 30 s
        let mut g = ReplayGuard::default();
        // Issued out of order (two directors' clocks): expiry decides.
        let (_, late) = i.issue("r", "u", 10_000); // forgotten after 100 s
        let (_, early) = i.issue("r", "u", 0); // after 90 s
        g.check_and_mark(&late, 10_000).expect("fresh");
        g.check_and_mark(&early, 10_000).expect("fresh");
        // A replay within the lifetime plus slack is refused, and refusing
        // it does not make the guard forget the first use.
        for now in [20_000, 89_999, 90_000] {
            assert_eq!(
                g.check_and_mark(&early, now),
                Err(TokenError::Replayed { nonce: early.nonce }),
                "at {now} ms"
            );
        }
        assert_eq!(g.len(), 2);
        // Any check purges what has expired by then: the earlier one only.
        let (_, other) = i.issue("r", "v", 90_001);
        g.check_and_mark(&other, 90_001).expect("fresh");
        assert!(!g.seen(early.nonce) && g.seen(late.nonce));
        assert_eq!(g.len(), 2);
        g.purge(100_001);
        assert!(!g.seen(late.nonce) && g.seen(other.nonce));
    }

    #[test]
    fn a_guard_holding_many_nonces_stays_bounded_by_expiry() {
        // 100 000 entries within one token lifetime, then all forgotten.
        let (i, _) = pair();
        let mut g = ReplayGuard::default();
        for k in 0..100_000u64 {
            let (_, c) = i.issue("r", "u", k / 10);
            g.check_and_mark(&c, k / 10).expect("fresh");
        }
        assert_eq!(g.len(), 100_000);
        let (_, c) = i.issue("r", "u", 200_000);
        g.check_and_mark(&c, 200_000).expect("fresh");
        assert_eq!(g.len(), 1, "only the newest is remembered");
    }
}
