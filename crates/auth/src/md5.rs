//! PostgreSQL's legacy md5 password challenge, server side: what a client must answer for a
//! given salt, and a constant-time check of its answer.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// The string a client sends for md5 auth:
/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`.
pub fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    let mut inner = Md5::new();
    inner.update(password.as_bytes());
    inner.update(user.as_bytes());
    let inner_hex = lower_hex(&inner.finalize());

    let mut outer = Md5::new();
    outer.update(inner_hex.as_bytes());
    outer.update(salt);
    format!("md5{}", lower_hex(&outer.finalize()))
}

/// Checks a client's md5 response in constant time, so timing does not leak how many leading
/// characters of a guess were right.
pub fn verify_md5(user: &str, password: &str, salt: [u8; 4], response: &str) -> bool {
    let expected = md5_response(user, password, salt);
    expected.as_bytes().ct_eq(response.as_bytes()).into()
}

/// A fresh salt for `AuthenticationMD5Password`; it must differ per attempt so a recorded
/// response cannot be replayed.
pub fn random_md5_salt() -> [u8; 4] {
    rand::random()
}

fn lower_hex(bytes: &[u8]) -> String {
    let nibble = |n: u8| char::from_digit(u32::from(n), 16).unwrap_or('0');
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(nibble(b >> 4));
        out.push(nibble(b & 0x0f));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // The same vector postgres-protocol tests its client with.
        let salt = [0x2a, 0x3d, 0x8f, 0xe0];
        assert_eq!(
            md5_response("md5_user", "password", salt),
            "md562af4dd09bbb41884907a838a3233294"
        );
    }

    #[test]
    fn verify_rejects_wrong_answers() {
        let salt = [1, 2, 3, 4];
        let good = md5_response("u", "p", salt);
        assert!(verify_md5("u", "p", salt, &good));
        assert!(!verify_md5("u", "q", salt, &good));
        assert!(!verify_md5("u", "p", [1, 2, 3, 5], &good));
        assert!(!verify_md5("u", "p", salt, ""));
        assert!(!verify_md5("u", "p", salt, &good[..good.len() - 1]));
        assert!(!verify_md5("u", "p", salt, &good.to_uppercase()));
    }

    #[test]
    fn salts_vary() {
        let salts: std::collections::HashSet<_> = (0..16).map(|_| random_md5_salt()).collect();
        assert!(salts.len() > 1);
    }
}
