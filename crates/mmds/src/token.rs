//! MMDS session tokens (`PUT /latest/api/token`).
//!
//! Upstream seals the expiry into the token with AES-GCM under a key that lives only in the
//! process, with `microvmid=⟨id⟩` as associated data. squib keeps the tokens it issued in a table
//! instead: a token is 36 bytes from the OS's CSPRNG in standard base64 (48 characters), valid
//! while it is in the table, unexpired on the monotonic clock, and issued under the current
//! instance id. The guest sees the same thing (an opaque 48-character string that stops working
//! at its TTL, or when the instance id changes), without a cipher dependency.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Shortest accepted TTL in seconds.
pub const MIN_TTL_SECONDS: u32 = 1;
/// Longest accepted TTL in seconds (6 hours).
pub const MAX_TTL_SECONDS: u32 = 21600;
/// Tokens longer than this are rejected without a lookup.
pub const MAX_TOKEN_LEN: usize = 70;
const TOKEN_BYTES: usize = 36;
// A guest hammering the token endpoint must not grow the table without bound. Six hours of
// tokens at this cap is more than one per two seconds, far beyond any real client.
const MAX_LIVE_TOKENS: usize = 16 * 1024;

/// Why no token was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The TTL is outside `MIN_TTL_SECONDS..=MAX_TTL_SECONDS`.
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between 1 and 21600."
    )]
    InvalidTtl(u32),
    /// The OS random source failed.
    #[error("Failed to generate a token: {0}")]
    Random(String),
}

#[derive(Debug, Clone)]
struct Issued {
    expires: Instant,
    instance_id: String,
}

/// Issues and checks tokens for one microVM.
#[derive(Debug, Default)]
pub struct TokenAuthority {
    instance_id: String,
    issued: HashMap<String, Issued>,
}

impl TokenAuthority {
    /// An authority for the microVM `instance_id` (the `--id` flag).
    pub fn new(instance_id: &str) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            issued: HashMap::new(),
        }
    }

    /// Rebinds to another instance id: every token issued before stops being valid.
    pub fn set_instance_id(&mut self, instance_id: &str) {
        if self.instance_id != instance_id {
            self.instance_id = instance_id.to_owned();
            self.issued.clear();
        }
    }

    /// A new token valid for `ttl_seconds` from `now`.
    pub fn generate(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds));
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        let token = base64::engine::general_purpose::STANDARD.encode(bytes);
        self.make_room(now);
        self.issued.insert(
            token.clone(),
            Issued {
                expires: now + Duration::from_secs(u64::from(ttl_seconds)),
                instance_id: self.instance_id.clone(),
            },
        );
        Ok(token)
    }

    /// Whether `token` was issued here, for the current instance id, and has not expired.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        if token.len() > MAX_TOKEN_LEN {
            return false;
        }
        self.issued
            .get(token)
            .is_some_and(|t| now < t.expires && t.instance_id == self.instance_id)
    }

    /// Tokens currently held (expired ones included until the next clean-up).
    pub fn len(&self) -> usize {
        self.issued.len()
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.issued.is_empty()
    }

    fn make_room(&mut self, now: Instant) {
        if self.issued.len() < MAX_LIVE_TOKENS {
            return;
        }
        self.issued.retain(|_, t| now < t.expires);
        if self.issued.len() >= MAX_LIVE_TOKENS {
            // Still full of live tokens: the one closest to expiry goes first.
            if let Some(oldest) = self
                .issued
                .iter()
                .min_by_key(|(_, t)| t.expires)
                .map(|(k, _)| k.clone())
            {
                self.issued.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_48_base64_chars_and_unique() {
        let mut auth = TokenAuthority::new("vm");
        let now = Instant::now();
        let a = auth.generate(60, now).unwrap();
        let b = auth.generate(60, now).unwrap();
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
        assert!(
            base64::engine::general_purpose::STANDARD
                .decode(&a)
                .is_ok_and(|v| v.len() == 36)
        );
    }

    #[test]
    fn ttl_bounds_and_text() {
        let mut auth = TokenAuthority::new("vm");
        let now = Instant::now();
        assert!(auth.generate(1, now).is_ok());
        assert!(auth.generate(21600, now).is_ok());
        assert_eq!(
            auth.generate(0, now).unwrap_err().to_string(),
            "Invalid time to live value provided for token: 0. Please provide a value between 1 and 21600."
        );
        assert_eq!(
            auth.generate(21601, now).unwrap_err(),
            TokenError::InvalidTtl(21601)
        );
    }

    #[test]
    fn expiry_follows_the_given_clock() {
        let mut auth = TokenAuthority::new("vm");
        let t0 = Instant::now();
        let tok = auth.generate(2, t0).unwrap();
        assert!(auth.is_valid(&tok, t0));
        assert!(auth.is_valid(&tok, t0 + Duration::from_millis(1999)));
        assert!(!auth.is_valid(&tok, t0 + Duration::from_secs(2)));
        assert!(!auth.is_valid("not-a-token", t0));
        assert!(!auth.is_valid(&"A".repeat(71), t0));
    }

    #[test]
    fn changing_the_instance_id_invalidates_tokens() {
        let mut auth = TokenAuthority::new("vm-a");
        let t0 = Instant::now();
        let tok = auth.generate(60, t0).unwrap();
        auth.set_instance_id("vm-a");
        assert!(auth.is_valid(&tok, t0));
        auth.set_instance_id("vm-b");
        assert!(!auth.is_valid(&tok, t0));
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut auth = TokenAuthority::new("vm");
        let t0 = Instant::now();
        for _ in 0..MAX_LIVE_TOKENS + 10 {
            auth.generate(60, t0).unwrap();
        }
        assert!(auth.len() <= MAX_LIVE_TOKENS);
    }
}
