//! md5 answers checked against `postgres-protocol`'s client, and property tests that no byte
//! sequence a client can send makes the SCRAM server panic.

use postgres_protocol::authentication::md5_hash;
use proptest::prelude::*;
use shardgate_auth::{md5_response, verify_md5, ScramSecret, ScramServer};

fn cheap_secret() -> ScramSecret {
    ScramSecret::from_password("pw", b"salt", 1)
}

proptest! {
    #[test]
    fn md5_matches_postgres_protocol(user in ".{0,16}", password in ".{0,24}", salt: [u8; 4]) {
        let ours = md5_response(&user, &password, salt);
        let theirs = md5_hash(user.as_bytes(), password.as_bytes(), salt);
        prop_assert_eq!(&ours, &theirs);
        prop_assert!(verify_md5(&user, &password, salt, &theirs));
    }

    #[test]
    fn client_first_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut server = ScramServer::with_nonce(cheap_secret(), "srv");
        let _ = server.client_first(&data);
        let _ = server.client_final(&data);
    }

    /// Inputs that follow the grammar closely enough to reach the later checks.
    #[test]
    fn near_valid_messages_never_panic(
        flag in "[nyp]|[a-z]|p=[a-z-]{0,8}",
        authzid in "(a=[a-z]{0,4})?",
        bare in "(n=[a-z]{0,4})?(,r=[!-~]{0,8})?(,[a-z]=[a-z]{0,4}){0,2}",
        cbind in "c=biws|c=eSws|c=[A-Za-z0-9+/=]{0,8}",
        nonce_tail in "[!-~]{0,8}",
        proof in "[A-Za-z0-9+/]{42}[AQgw]=|[A-Za-z0-9+/=]{0,48}",
    ) {
        let first = format!("{flag},{authzid},{bare}");
        let mut server = ScramServer::with_nonce(cheap_secret(), "srv");
        let server_first = server.client_first(first.as_bytes());
        let nonce = match &server_first {
            Ok(reply) => String::from_utf8_lossy(reply)
                .split(',')
                .next()
                .unwrap_or_default()
                .trim_start_matches("r=")
                .to_owned(),
            Err(_) => String::new(),
        };
        let last = format!("{cbind},r={nonce}{nonce_tail},p={proof}");
        let result = server.client_final(last.as_bytes());
        prop_assert!(result.is_err(), "a random proof must not verify");
    }

    #[test]
    fn client_final_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut server = ScramServer::with_nonce(cheap_secret(), "srv");
        server.client_first(b"n,,n=,r=abc").expect("valid client-first");
        prop_assert!(server.client_final(&data).is_err());
    }
}
