//! SCRAM channel binding (RFC 5802 section 6): what a connection can bind to, and the
//! `tls-server-end-point` data (RFC 5929 section 4.1) of a server certificate.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// How the SCRAM exchange of one connection stands towards channel binding: it decides which
/// gs2 flags the client may send, and what its `c=` attribute must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ChannelBinding {
    /// The connection cannot bind (plain TCP, or a certificate we cannot hash): flags `n`
    /// and `y` are both accepted.
    #[default]
    Unavailable,
    /// The server offered SCRAM-SHA-256-PLUS and the client chose SCRAM-SHA-256: flag `y`
    /// (the client could bind but thinks the server cannot) means someone removed the offer
    /// on the way, and is refused, as PostgreSQL refuses it.
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS: it must send `p=tls-server-end-point`, and `c=`
    /// must carry the gs2 header followed by these bytes.
    TlsServerEndPoint(Vec<u8>),
}

/// The `tls-server-end-point` binding data of a DER certificate: its hash under the hash
/// function of its signature algorithm, SHA-256 when that is MD5 or SHA-1 (RFC 5929 4.1).
/// None when the signature algorithm has no such hash function (Ed25519, RSASSA-PSS) or the
/// certificate cannot be read: PostgreSQL cannot bind to those either.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let hash = match signature_algorithm(cert_der)? {
        // md5WithRSA, sha1WithRSA, sha256WithRSA, ecdsa-with-SHA1, ecdsa-with-SHA256
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04 | 0x05 | 0x0b]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02] => Sha256::digest(cert_der).to_vec(),
        // sha384WithRSA, ecdsa-with-SHA384
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => Sha384::digest(cert_der).to_vec(),
        // sha512WithRSA, ecdsa-with-SHA512
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04] => Sha512::digest(cert_der).to_vec(),
        _ => return None,
    };
    Some(hash)
}

/// The OID (content bytes) of `Certificate.signatureAlgorithm`: the second element of the
/// outer SEQUENCE, after `tbsCertificate`.
fn signature_algorithm(cert_der: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(cert_der, 0x30)?;
    let (_tbs, rest) = der_any(certificate)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// One DER element with this tag: (its contents, what follows it).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    der_any(input)
}

/// One DER element of any (single-byte) tag: (its contents, what follows it).
fn der_any(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((input.get(header..end)?, input.get(end..)?))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A minimal certificate-shaped DER: SEQUENCE { SEQUENCE {}, SEQUENCE { OID } }.
    fn cert_with(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        let mut der = vec![0x30, body.len() as u8];
        der.extend_from_slice(&body);
        der
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        let ecdsa_sha256 = cert_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
        assert_eq!(
            tls_server_end_point(&ecdsa_sha256),
            Some(Sha256::digest(&ecdsa_sha256).to_vec())
        );
        let rsa_sha1 = cert_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(tls_server_end_point(&rsa_sha1).map(|h| h.len()), Some(32));
        let rsa_sha384 = cert_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]);
        assert_eq!(tls_server_end_point(&rsa_sha384).map(|h| h.len()), Some(48));
        let ecdsa_sha512 = cert_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]);
        assert_eq!(
            tls_server_end_point(&ecdsa_sha512).map(|h| h.len()),
            Some(64)
        );
    }

    #[test]
    fn unknown_algorithms_and_garbage_cannot_bind() {
        let ed25519 = cert_with(&[0x2b, 0x65, 0x70]);
        assert_eq!(tls_server_end_point(&ed25519), None);
        assert_eq!(tls_server_end_point(b""), None);
        assert_eq!(
            tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        let mut truncated = cert_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
        truncated.pop();
        assert_eq!(tls_server_end_point(&truncated), None);
    }
}
