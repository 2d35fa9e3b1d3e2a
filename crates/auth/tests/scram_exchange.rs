//! Whole SCRAM-SHA-256 exchanges through the public API: against the `postgres-protocol`
//! client that shardgate itself uses towards backends, and against RFC 7677's test vector.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use shardgate_auth::{AuthError, ChannelBinding as Binding, ScramSecret, ScramServer};

/// Runs one exchange; `Ok` only if the server accepted the proof and the client accepted the
/// server's signature.
fn exchange(
    secret: ScramSecret,
    client_password: &str,
    binding: ChannelBinding,
) -> Result<(), AuthError> {
    exchange_on(Binding::Unavailable, secret, client_password, binding)
}

/// [`exchange`] on a connection standing so towards channel binding.
fn exchange_on(
    connection: Binding,
    secret: ScramSecret,
    client_password: &str,
    binding: ChannelBinding,
) -> Result<(), AuthError> {
    let mut server = ScramServer::new(secret).with_channel_binding(connection);
    let mut client = ScramSha256::new(client_password.as_bytes(), binding);
    let server_first = server.client_first(client.message())?;
    client
        .update(&server_first)
        .expect("client accepts server-first");
    let server_final = server.client_final(client.message())?;
    client
        .finish(&server_final)
        .expect("client accepts server-final");
    Ok(())
}

#[test]
fn right_password_authenticates_both_ways() {
    let secret = ScramSecret::generate("s3cret");
    exchange(secret.clone(), "s3cret", ChannelBinding::unsupported()).expect("gs2 n,,");
    exchange(secret, "s3cret", ChannelBinding::unrequested()).expect("gs2 y,,");
}

#[test]
fn wrong_password_is_invalid_proof() {
    let secret = ScramSecret::generate("s3cret");
    let result = exchange(secret, "S3cret", ChannelBinding::unsupported());
    assert!(matches!(result, Err(AuthError::InvalidProof)), "{result:?}");
}

#[test]
fn channel_binding_without_plus_is_refused() {
    let secret = ScramSecret::generate("s3cret");
    for connection in [Binding::Unavailable, Binding::Declined] {
        let binding = ChannelBinding::tls_server_end_point(vec![1, 2, 3]);
        let result = exchange_on(connection, secret.clone(), "s3cret", binding);
        assert!(
            matches!(result, Err(AuthError::ChannelBinding(_))),
            "{result:?}"
        );
    }
}

#[test]
fn plus_binds_to_the_server_certificate_hash() {
    let secret = ScramSecret::generate("s3cret");
    let hash = vec![7u8; 32];
    let plus = || Binding::TlsServerEndPoint(hash.clone());
    exchange_on(
        plus(),
        secret.clone(),
        "s3cret",
        ChannelBinding::tls_server_end_point(hash.clone()),
    )
    .expect("bound exchange");
    // The client's TLS session ends somewhere else (a man in the middle): other data.
    let result = exchange_on(
        plus(),
        secret.clone(),
        "s3cret",
        ChannelBinding::tls_server_end_point(vec![8u8; 32]),
    );
    assert!(
        matches!(result, Err(AuthError::ChannelBinding(_))),
        "{result:?}"
    );
    // PLUS chosen, but no binding data sent.
    for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
        let result = exchange_on(plus(), secret.clone(), "s3cret", binding);
        assert!(
            matches!(result, Err(AuthError::ChannelBinding(_))),
            "{result:?}"
        );
    }
    // A wrong password with the right binding is still only a wrong password.
    let result = exchange_on(
        plus(),
        secret,
        "S3cret",
        ChannelBinding::tls_server_end_point(hash.clone()),
    );
    assert!(matches!(result, Err(AuthError::InvalidProof)), "{result:?}");
}

#[test]
fn y_flag_is_a_downgrade_when_plus_was_offered() {
    let secret = ScramSecret::generate("s3cret");
    let result = exchange_on(
        Binding::Declined,
        secret.clone(),
        "s3cret",
        ChannelBinding::unrequested(),
    );
    assert!(
        matches!(result, Err(AuthError::ChannelBinding(_))),
        "{result:?}"
    );
    exchange_on(
        Binding::Declined,
        secret,
        "s3cret",
        ChannelBinding::unsupported(),
    )
    .expect("gs2 n,, without binding");
}

#[test]
fn mock_secret_fails_only_at_the_proof() {
    let key = [42u8; 32];
    let mut server = ScramServer::new(ScramSecret::mock("ghost", &key));
    let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
    let server_first = server
        .client_first(client.message())
        .expect("looks like a real user");
    client
        .update(&server_first)
        .expect("client accepts mock server-first");
    let result = server.client_final(client.message());
    assert!(matches!(result, Err(AuthError::InvalidProof)), "{result:?}");

    // Same unknown user, same salt and iteration count: nothing distinguishes it across tries.
    let mut again = ScramServer::with_nonce(ScramSecret::mock("ghost", &key), "n");
    let first_again = again.client_first(b"n,,n=,r=c").expect("valid");
    let salt_part = |m: &[u8]| {
        String::from_utf8_lossy(m)
            .split(',')
            .skip(1)
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(salt_part(&server_first), salt_part(&first_again));
}

#[test]
fn saslprep_and_fallback_match_the_client() {
    // Mapped by SASLprep (soft hyphen vanishes), and prohibited (control char: raw bytes).
    let secret = ScramSecret::from_password("IX", b"salt", 64);
    exchange(secret, "I\u{00AD}X", ChannelBinding::unsupported()).expect("SASLprep applied");
    let raw = "bell\u{0007}pw";
    exchange(
        ScramSecret::from_password(raw, b"salt", 64),
        raw,
        ChannelBinding::unsupported(),
    )
    .expect("raw fallback on both sides");
}

#[test]
fn rfc7677_test_vector() {
    let salt = STANDARD
        .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
        .expect("RFC salt");
    let secret = ScramSecret::from_password("pencil", &salt, 4096);
    let mut server = ScramServer::with_nonce(secret, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");

    let server_first = server
        .client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        .expect("RFC client-first");
    assert_eq!(
        String::from_utf8_lossy(&server_first),
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );

    let server_final = server
        .client_final(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        )
        .expect("RFC proof verifies");
    assert_eq!(
        String::from_utf8_lossy(&server_final),
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
}

#[test]
fn rfc7677_vector_with_a_flipped_proof_bit_fails() {
    let salt = STANDARD
        .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
        .expect("RFC salt");
    let mut server = ScramServer::with_nonce(
        ScramSecret::from_password("pencil", &salt, 4096),
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    );
    server
        .client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        .expect("RFC client-first");
    let result = server.client_final(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
          p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU=",
    );
    assert!(matches!(result, Err(AuthError::InvalidProof)), "{result:?}");
}
