//! What shardgate keeps per SCRAM user (salt, iterations, StoredKey, ServerKey) and the
//! RFC 5802 key derivations behind it; the password itself is dropped once derived.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

/// PostgreSQL's default `scram_iterations`, so our exchange looks like a stock server's.
pub(crate) const DEFAULT_ITERATIONS: u32 = 4096;
/// PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`.
const SALT_LEN: usize = 16;

/// The SCRAM-SHA-256 verifier of one user: enough to check a client's proof and prove the
/// server's identity back, but not to log in as that user elsewhere.
///
/// Derive it once when the configuration loads; [`ScramSecret::from_password`] runs the full
/// PBKDF2 loop and is deliberately slow.
#[derive(Clone)]
pub struct ScramSecret {
    pub(crate) salt: Vec<u8>,
    pub(crate) iterations: u32,
    pub(crate) stored_key: [u8; 32],
    pub(crate) server_key: [u8; 32],
    /// Set for [`ScramSecret::mock`]: no proof may ever pass, even one that happened to match.
    pub(crate) doomed: bool,
}

impl ScramSecret {
    /// Derives the verifier from a password, the way PostgreSQL does for
    /// `password_encryption = scram-sha-256`.
    ///
    /// The password is normalised with SASLprep; a password that is not valid SASLprep input is
    /// used as raw bytes, as PostgreSQL (and libpq) do, so both sides agree on the key.
    /// An `iterations` of 0 is taken as 1: RFC 5802 needs at least one, and clients reject
    /// `i=0`.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations = iterations.max(1);
        let normalized = saslprep_or_raw(password);
        let salted_password =
            pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(&normalized, salt, iterations);
        let client_key = hmac_sha256(&salted_password, &[b"Client Key"]);
        Self {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted_password, &[b"Server Key"]),
            doomed: false,
        }
    }

    /// Derives the verifier with a fresh random 16-byte salt and 4096 iterations
    /// (PostgreSQL's defaults).
    pub fn generate(password: &str) -> Self {
        let salt: [u8; SALT_LEN] = rand::random();
        Self::from_password(password, &salt, DEFAULT_ITERATIONS)
    }

    /// A stable fake verifier for a user that does not exist, so that the exchange runs the
    /// same way as for a real user and fails only at the proof (PostgreSQL's "mock
    /// authentication"): a client cannot probe which user names exist.
    ///
    /// `key` is a random secret chosen once per process. The salt is keyed by it, so the same
    /// unknown name always gets the same salt (a changing salt would give the game away) while
    /// nobody without the key can tell it from a real one.
    pub fn mock(username: &str, key: &[u8; 32]) -> Self {
        let salt_block = hmac_sha256(key, &[b"shardgate mock salt\0", username.as_bytes()]);
        let salt = salt_block.get(..SALT_LEN).unwrap_or(&salt_block).to_vec();
        Self {
            salt,
            iterations: DEFAULT_ITERATIONS,
            // Real-looking keys so the verification does the same work as for a real user;
            // `doomed` is what actually guarantees failure.
            stored_key: hmac_sha256(key, &[b"shardgate mock stored key\0", username.as_bytes()]),
            server_key: hmac_sha256(key, &[b"shardgate mock server key\0", username.as_bytes()]),
            doomed: true,
        }
    }
}

impl fmt::Debug for ScramSecret {
    /// Prints only what the server sends in the clear anyway; never the keys, and not whether
    /// the secret is a mock, since logs must not tell which users exist.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

/// PostgreSQL's `pg_saslprep` fallback: passwords need not be valid SASLprep input.
fn saslprep_or_raw(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// HMAC-SHA-256 over the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_key_material() {
        let secret = ScramSecret::from_password("pencil", b"salt", 1);
        let printed = format!("{secret:?}");
        assert!(printed.contains("iterations: 1"), "{printed}");
        assert!(!printed.contains("stored"), "{printed}");
        assert!(!printed.contains("server_key"), "{printed}");
        assert!(!printed.contains("doomed"), "{printed}");
    }

    #[test]
    fn mock_is_stable_per_user_and_key() {
        let key = [7u8; 32];
        let a = ScramSecret::mock("alice", &key);
        let again = ScramSecret::mock("alice", &key);
        let bob = ScramSecret::mock("bob", &key);
        let other_key = ScramSecret::mock("alice", &[8u8; 32]);
        assert_eq!(a.salt, again.salt);
        assert_eq!(a.stored_key, again.stored_key);
        assert_eq!(a.salt.len(), SALT_LEN);
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
        assert_ne!(a.salt, bob.salt);
        assert_ne!(a.salt, other_key.salt);
        assert!(a.doomed);
    }

    #[test]
    fn generate_uses_fresh_salt_and_defaults() {
        let a = ScramSecret::generate("pw");
        let b = ScramSecret::generate("pw");
        assert_eq!(a.salt.len(), SALT_LEN);
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
        assert_ne!(a.salt, b.salt);
        assert!(!a.doomed);
    }

    #[test]
    fn saslprep_maps_and_falls_back() {
        // Soft hyphen is "mapped to nothing" by SASLprep.
        assert_eq!(saslprep_or_raw("I\u{00AD}X"), b"IX");
        // A control character is prohibited: PostgreSQL then uses the raw bytes.
        assert_eq!(saslprep_or_raw("a\u{0007}b"), "a\u{0007}b".as_bytes());
        assert_eq!(
            ScramSecret::from_password("I\u{00AD}X", b"s", 2).stored_key,
            ScramSecret::from_password("IX", b"s", 2).stored_key
        );
    }

    #[test]
    fn zero_iterations_is_one() {
        let zero = ScramSecret::from_password("pw", b"s", 0);
        let one = ScramSecret::from_password("pw", b"s", 1);
        assert_eq!(zero.iterations, 1);
        assert_eq!(zero.stored_key, one.stored_key);
    }
}
