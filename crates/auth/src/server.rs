//! The server side of one SCRAM-SHA-256 exchange, as a state machine fed with the SASL
//! payloads the client sends; it builds the replies but never sends them.

use crate::message::{parse_client_final, parse_client_first, Gs2Flag};
use crate::secret::{hmac_sha256, sha256, ScramSecret};
use crate::{AuthError, ChannelBinding};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::mem;
use subtle::ConstantTimeEq;

/// Random bytes in the server's half of the nonce; PostgreSQL uses 18 as well.
const SERVER_NONCE_BYTES: usize = 18;

/// One SCRAM-SHA-256 authentication of one client (RFC 5802 / RFC 7677, as PostgreSQL runs it,
/// with `tls-server-end-point` channel binding when the client chose SCRAM-SHA-256-PLUS).
///
/// Feed it [`client_first`](Self::client_first) then [`client_final`](Self::client_final).
/// Any error ends the exchange: later calls return [`AuthError::OutOfOrder`], so a client
/// cannot retry proofs against the same nonce.
#[derive(Debug)]
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    binding: ChannelBinding,
    state: State,
}

#[derive(Debug)]
enum State {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// What `c=` must decode to: the gs2 header, then any channel-binding data.
        channel_binding: Vec<u8>,
        /// client nonce + server nonce, as sent in server-first.
        nonce: String,
        /// `client-first-message-bare "," server-first-message ","`: the AuthMessage up to
        /// the client-final part, which arrives later.
        auth_message_prefix: Vec<u8>,
    },
    /// Succeeded or failed; nothing more is accepted either way.
    Finished,
}

impl ScramServer {
    /// Starts an exchange with a fresh random server nonce (18 bytes, base64).
    pub fn new(secret: ScramSecret) -> Self {
        let nonce_bytes: [u8; SERVER_NONCE_BYTES] = rand::random();
        Self::with_nonce(secret, &STANDARD.encode(nonce_bytes))
    }

    /// Starts an exchange with a chosen server nonce, so tests are reproducible.
    ///
    /// The nonce must be RFC 5802 `printable` (ASCII 0x21-0x7E without `,`); never use a fixed
    /// nonce outside tests, since that allows replaying a recorded exchange.
    pub fn with_nonce(secret: ScramSecret, server_nonce: &str) -> Self {
        Self {
            secret,
            server_nonce: server_nonce.to_owned(),
            binding: ChannelBinding::Unavailable,
            state: State::AwaitingClientFirst,
        }
    }

    /// Says how this connection stands towards channel binding (by default it cannot bind).
    pub fn with_channel_binding(mut self, binding: ChannelBinding) -> Self {
        self.binding = binding;
        self
    }

    /// Checks the client's gs2 flag against the mechanism it chose and the connection, as
    /// PostgreSQL does; returns the channel-binding data `c=` must carry after the header.
    fn binding_data(&self, flag: &Gs2Flag<'_>) -> Result<&[u8], AuthError> {
        match (flag, &self.binding) {
            (Gs2Flag::Binds(b"tls-server-end-point"), ChannelBinding::TlsServerEndPoint(data)) => {
                Ok(data)
            }
            (Gs2Flag::Binds(_), ChannelBinding::TlsServerEndPoint(_)) => Err(
                AuthError::ChannelBinding("unsupported channel-binding type"),
            ),
            (Gs2Flag::Binds(_), _) => Err(AuthError::ChannelBinding(
                "the client selected SCRAM-SHA-256 without channel binding, but sent \
                 channel-binding data",
            )),
            (_, ChannelBinding::TlsServerEndPoint(_)) => Err(AuthError::ChannelBinding(
                "the client selected SCRAM-SHA-256-PLUS, but sent no channel-binding data",
            )),
            (Gs2Flag::ClientCanBind, ChannelBinding::Declined) => Err(AuthError::ChannelBinding(
                "the client supports channel binding but thinks the server does not; \
                 this server does support it",
            )),
            (Gs2Flag::No | Gs2Flag::ClientCanBind, _) => Ok(&[]),
        }
    }

    /// Takes the data of `SASLInitialResponse` (client-first-message) and returns the
    /// server-first-message to send in `AuthenticationSASLContinue`.
    pub fn client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, State::AwaitingClientFirst) {
            self.state = State::Finished;
            return Err(AuthError::OutOfOrder);
        }
        self.state = State::Finished;
        let first = parse_client_first(data)?;
        let mut channel_binding = first.gs2_header.to_vec();
        channel_binding.extend_from_slice(self.binding_data(&first.flag)?);

        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.secret.salt),
            self.secret.iterations
        )
        .into_bytes();

        let mut auth_message_prefix = Vec::with_capacity(first.bare.len() + server_first.len() + 2);
        auth_message_prefix.extend_from_slice(first.bare);
        auth_message_prefix.push(b',');
        auth_message_prefix.extend_from_slice(&server_first);
        auth_message_prefix.push(b',');

        self.state = State::AwaitingClientFinal {
            channel_binding,
            nonce,
            auth_message_prefix,
        };
        Ok(server_first)
    }

    /// Takes the data of `SASLResponse` (client-final-message), checks the client's proof and
    /// returns the server-final-message (`v=...`) to send in `AuthenticationSASLFinal`.
    ///
    /// Only an `Ok` means the client knows the password.
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::AwaitingClientFinal {
            channel_binding,
            nonce,
            mut auth_message_prefix,
        } = mem::replace(&mut self.state, State::Finished)
        else {
            return Err(AuthError::OutOfOrder);
        };
        let last = parse_client_final(data)?;
        // A different header means something between us and the client changed the first
        // message; different binding data, that the client's TLS session ends elsewhere.
        if last.channel_binding != channel_binding {
            return Err(AuthError::ChannelBinding(
                "channel-binding data does not match the gs2 header and this connection",
            ));
        }
        if last.nonce != nonce.as_bytes() {
            return Err(AuthError::NonceMismatch);
        }

        auth_message_prefix.extend_from_slice(last.without_proof);
        let auth_message = auth_message_prefix;

        // ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); it is right iff
        // H(ClientKey) == StoredKey.
        let client_signature = hmac_sha256(&self.secret.stored_key, &[&auth_message]);
        let mut client_key = last.proof;
        for (key, sig) in client_key.iter_mut().zip(client_signature) {
            *key ^= sig;
        }
        let matches = sha256(&client_key).ct_eq(&self.secret.stored_key);
        let genuine = u8::from(!self.secret.doomed).ct_eq(&1);
        if !bool::from(matches & genuine) {
            return Err(AuthError::InvalidProof);
        }

        let server_signature = hmac_sha256(&self.secret.server_key, &[&auth_message]);
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ScramSecret {
        ScramSecret::from_password("pw", b"salt", 2)
    }

    #[test]
    fn final_before_first_is_out_of_order() {
        let mut server = ScramServer::with_nonce(secret(), "srv");
        assert!(matches!(
            server.client_final(b"c=biws,r=x,p=AAAA"),
            Err(AuthError::OutOfOrder)
        ));
        assert!(matches!(
            server.client_first(b"n,,n=,r=abc"),
            Err(AuthError::OutOfOrder)
        ));
    }

    #[test]
    fn first_twice_is_out_of_order() {
        let mut server = ScramServer::with_nonce(secret(), "srv");
        let first = server.client_first(b"n,,n=,r=abc").expect("valid");
        assert_eq!(
            first,
            format!("r=abcsrv,s={},i=2", STANDARD.encode(b"salt")).into_bytes()
        );
        assert!(matches!(
            server.client_first(b"n,,n=,r=abc"),
            Err(AuthError::OutOfOrder)
        ));
    }

    #[test]
    fn error_ends_the_exchange() {
        let mut server = ScramServer::with_nonce(secret(), "srv");
        assert!(server.client_first(b"garbage").is_err());
        assert!(matches!(
            server.client_first(b"n,,n=,r=abc"),
            Err(AuthError::OutOfOrder)
        ));
    }

    #[test]
    fn nonce_and_channel_binding_are_checked() {
        let proof = STANDARD.encode([0u8; 32]);
        let mut server = ScramServer::with_nonce(secret(), "srv");
        server.client_first(b"n,,n=,r=abc").expect("valid");
        let reply = server.client_final(format!("c=biws,r=abcXXX,p={proof}").as_bytes());
        assert!(matches!(reply, Err(AuthError::NonceMismatch)));

        let mut server = ScramServer::with_nonce(secret(), "srv");
        server.client_first(b"n,,n=,r=abc").expect("valid");
        // "eSws" is base64("y,,"): the client claims a different header than it sent.
        let reply = server.client_final(format!("c=eSws,r=abcsrv,p={proof}").as_bytes());
        assert!(matches!(reply, Err(AuthError::ChannelBinding(_))));
        assert!(matches!(
            server.client_final(b""),
            Err(AuthError::OutOfOrder)
        ));
    }

    #[test]
    fn random_nonce_is_base64_of_18_bytes() {
        let a = ScramServer::new(secret());
        let b = ScramServer::new(secret());
        assert_eq!(a.server_nonce.len(), 24);
        assert!(STANDARD
            .decode(&a.server_nonce)
            .is_ok_and(|n| n.len() == SERVER_NONCE_BYTES));
        assert_ne!(a.server_nonce, b.server_nonce);
    }
}
