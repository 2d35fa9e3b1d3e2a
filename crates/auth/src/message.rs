//! Parsers for the two SCRAM messages a client sends (RFC 5802 section 7), over raw bytes
//! from an unauthenticated peer: they borrow from the input and never panic.

use crate::AuthError;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The gs2 channel-binding flag of a client-first-message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gs2Flag<'a> {
    /// `n`: the client does not bind.
    No,
    /// `y`: the client could bind, but thinks the server cannot.
    ClientCanBind,
    /// `p=name`: the client binds with this channel-binding type.
    Binds(&'a [u8]),
}

/// The parts of a client-first-message the server needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClientFirst<'a> {
    pub(crate) flag: Gs2Flag<'a>,
    /// `n,,`, `y,,` or `p=name,,`, kept verbatim: client-final must echo it in `c=`.
    pub(crate) gs2_header: &'a [u8],
    /// client-first-message-bare, which enters the AuthMessage as sent.
    pub(crate) bare: &'a [u8],
    pub(crate) client_nonce: &'a str,
}

/// The parts of a client-final-message the server needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClientFinal<'a> {
    /// Decoded `c=` value (gs2 header, then the channel-binding data if the client binds).
    pub(crate) channel_binding: Vec<u8>,
    pub(crate) nonce: &'a [u8],
    /// client-final-message-without-proof, which enters the AuthMessage as sent.
    pub(crate) without_proof: &'a [u8],
    pub(crate) proof: [u8; 32],
}

/// Parses `gs2-header client-first-message-bare`.
///
/// Like PostgreSQL, the user name in `n=` is ignored (the startup packet named the user and
/// libpq sends it empty), authzid and mandatory extensions (`m=`) are refused, and optional
/// extensions after the nonce are skipped.
pub(crate) fn parse_client_first(data: &[u8]) -> Result<ClientFirst<'_>, AuthError> {
    let flag_end = data
        .iter()
        .position(|&b| b == b',')
        .ok_or(AuthError::Malformed(
            "comma expected after channel-binding flag",
        ))?;
    let flag = match data.split_at(flag_end).0 {
        b"n" => Gs2Flag::No,
        b"y" => Gs2Flag::ClientCanBind,
        [b'p', b'=', name @ ..] if !name.is_empty() => Gs2Flag::Binds(name),
        _ => return Err(AuthError::Malformed("unexpected channel-binding flag")),
    };
    let after_flag = flag_end + 1;
    match data.get(after_flag) {
        Some(b',') => {}
        Some(b'a') => {
            return Err(AuthError::Malformed(
                "authorization identity is not supported",
            ))
        }
        _ => return Err(AuthError::Malformed("invalid gs2 header")),
    }
    let (gs2_header, bare) = data
        .split_at_checked(after_flag + 1)
        .ok_or(AuthError::Malformed("client-first-message is truncated"))?;

    let mut attrs = bare.split(|&b| b == b',');
    let user = attrs.next().unwrap_or_default();
    if user.starts_with(b"m=") {
        return Err(AuthError::Malformed(
            "mandatory extensions are not supported",
        ));
    }
    attr_value(user, b'n').ok_or(AuthError::Malformed("user name attribute expected"))?;
    let nonce = attrs
        .next()
        .and_then(|attr| attr_value(attr, b'r'))
        .ok_or(AuthError::Malformed("nonce attribute expected"))?;
    if nonce.is_empty() || !nonce.iter().all(|&b| is_printable(b)) {
        return Err(AuthError::Malformed("nonce must be printable ASCII"));
    }
    let client_nonce = std::str::from_utf8(nonce)
        .map_err(|_| AuthError::Malformed("nonce must be printable ASCII"))?;
    for extension in attrs {
        check_extension(extension)?;
    }
    Ok(ClientFirst {
        flag,
        gs2_header,
        bare,
        client_nonce,
    })
}

/// Parses `c=... ,r=... [,extensions] ,p=...`; the proof must come last.
pub(crate) fn parse_client_final(data: &[u8]) -> Result<ClientFinal<'_>, AuthError> {
    let comma = data
        .iter()
        .rposition(|&b| b == b',')
        .ok_or(AuthError::Malformed("proof attribute expected"))?;
    let (without_proof, proof_attr) = data.split_at(comma);
    let proof_b64 = proof_attr
        .strip_prefix(b",")
        .and_then(|attr| attr_value(attr, b'p'))
        .ok_or(AuthError::Malformed("proof attribute expected last"))?;

    let mut attrs = without_proof.split(|&b| b == b',');
    let cbind_b64 = attrs
        .next()
        .and_then(|attr| attr_value(attr, b'c'))
        .ok_or(AuthError::Malformed("channel-binding attribute expected"))?;
    let channel_binding = STANDARD
        .decode(cbind_b64)
        .map_err(|_| AuthError::Malformed("channel-binding attribute is not base64"))?;
    let nonce = attrs
        .next()
        .and_then(|attr| attr_value(attr, b'r'))
        .ok_or(AuthError::Malformed("nonce attribute expected"))?;
    for extension in attrs {
        check_extension(extension)?;
    }

    let proof = STANDARD
        .decode(proof_b64)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or(AuthError::Malformed("proof is not 32 bytes of base64"))?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

/// The value of `name=value`, if `attr` has that name.
fn attr_value(attr: &[u8], name: u8) -> Option<&[u8]> {
    match attr {
        [n, b'=', value @ ..] if *n == name => Some(value),
        _ => None,
    }
}

/// Optional extensions carry no meaning for us, but must still look like attributes.
fn check_extension(attr: &[u8]) -> Result<(), AuthError> {
    match attr {
        [n, b'=', ..] if n.is_ascii_alphabetic() => Ok(()),
        _ => Err(AuthError::Malformed("invalid attribute")),
    }
}

/// RFC 5802 `printable`: `%x21-2B / %x2D-7E` (no comma).
fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_first_as_libpq_sends_it() {
        let parsed = parse_client_first(b"n,,n=,r=abc").expect("valid");
        assert_eq!(parsed.flag, Gs2Flag::No);
        assert_eq!(parsed.gs2_header, b"n,,");
        assert_eq!(parsed.bare, b"n=,r=abc");
        assert_eq!(parsed.client_nonce, "abc");
    }

    #[test]
    fn client_first_accepts_y_flag_user_and_extensions() {
        let parsed = parse_client_first(b"y,,n=bob,r=x~y,e=ext").expect("valid");
        assert_eq!(parsed.flag, Gs2Flag::ClientCanBind);
        assert_eq!(parsed.gs2_header, b"y,,");
        assert_eq!(parsed.bare, b"n=bob,r=x~y,e=ext");
        assert_eq!(parsed.client_nonce, "x~y");
    }

    #[test]
    fn client_first_with_channel_binding() {
        let parsed = parse_client_first(b"p=tls-server-end-point,,n=,r=abc").expect("valid");
        assert_eq!(parsed.flag, Gs2Flag::Binds(b"tls-server-end-point"));
        assert_eq!(parsed.gs2_header, b"p=tls-server-end-point,,");
        assert_eq!(parsed.bare, b"n=,r=abc");
    }

    #[test]
    fn client_first_rejections() {
        let malformed =
            |data: &[u8]| matches!(parse_client_first(data), Err(AuthError::Malformed(_)));
        assert!(malformed(b""));
        assert!(malformed(b"p=,,n=,r=abc"));
        assert!(malformed(b"p,,n=,r=abc"));
        assert!(malformed(b"n"));
        assert!(malformed(b"n,"));
        assert!(malformed(b"x,,n=,r=abc"));
        assert!(malformed(b"n,a=admin,n=,r=abc"));
        assert!(malformed(b"n,,m=ext,n=,r=abc"));
        assert!(malformed(b"n,,r=abc"));
        assert!(malformed(b"n,,n=,r="));
        assert!(malformed(b"n,,n=,r=a b"));
        assert!(malformed(b"n,,n=,r=\xff"));
        assert!(malformed(b"n,,n=,r=abc,garbage"));
    }

    #[test]
    fn client_final_parts() {
        let proof = STANDARD.encode([9u8; 32]);
        let msg = format!("c=biws,r=abcdef,x=ext,p={proof}");
        let parsed = parse_client_final(msg.as_bytes()).expect("valid");
        assert_eq!(parsed.channel_binding, b"n,,");
        assert_eq!(parsed.nonce, b"abcdef");
        assert_eq!(parsed.without_proof, b"c=biws,r=abcdef,x=ext");
        assert_eq!(parsed.proof, [9u8; 32]);
    }

    #[test]
    fn client_final_rejections() {
        let proof = STANDARD.encode([9u8; 32]);
        let malformed = |data: String| {
            matches!(
                parse_client_final(data.as_bytes()),
                Err(AuthError::Malformed(_))
            )
        };
        assert!(malformed(String::new()));
        assert!(malformed(format!("p={proof}")));
        assert!(malformed(format!("r=abc,p={proof}")));
        assert!(malformed(format!("c=biws,p={proof}")));
        assert!(malformed(format!("c=!!,r=abc,p={proof}")));
        assert!(malformed(format!("c=biws,r=abc,p={proof},x=1")));
        assert!(malformed("c=biws,r=abc,p=AAAA".to_owned()));
        assert!(malformed("c=biws,r=abc,p=***".to_owned()));
        assert!(malformed(format!("c=biws,r=abc,1,p={proof}")));
    }
}
