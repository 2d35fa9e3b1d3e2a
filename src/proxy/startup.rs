//! A client's first moments: SSLRequest/GSSENCRequest negotiation, CancelRequest,
//! the StartupMessage, authentication (SCRAM-SHA-256, md5, trust), and the
//! ParameterStatus/BackendKeyData/ReadyForQuery greeting.

use bytes::BytesMut;
use shardgate_auth::{
    random_md5_salt, verify_md5, AuthError, ChannelBinding, ScramServer, SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
};
use shardgate_config::AuthMethod;
use shardgate_wire::{
    backend, decode_password_message, decode_sasl_initial_response, parse_startup, split_frame,
    tag, StartupRequest, MAX_STARTUP_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::errors::ClientError;
use super::params::{quote_literal, SessionParams, NOT_SETTINGS};
use super::{Shared, Snapshot};

/// What the client asked for at startup, once it has authenticated.
#[derive(Debug)]
pub(crate) struct Startup {
    pub(crate) user: String,
    pub(crate) params: Vec<(String, String)>,
}

/// The first request on a fresh connection. Cancel safe (partial bytes stay in `buf`).
pub(crate) async fn read_startup<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<StartupRequest>, ClientError> {
    loop {
        if let Some(req) = parse_startup(buf)? {
            return Ok(Some(req));
        }
        if buf.len() > MAX_STARTUP_LEN {
            return Err(ClientError::Protocol("startup packet too long"));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn read_password_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, ClientError> {
    loop {
        if let Some(frame) = split_frame(buf, MAX_STARTUP_LEN)? {
            if frame.tag != tag::PASSWORD {
                return Err(ClientError::Protocol("expected a password message"));
            }
            return Ok(frame.body);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
) -> Result<(), ClientError> {
    stream.write_all(out).await?;
    out.clear();
    Ok(())
}

/// Authenticates the client named in `params`. On success the client has been sent
/// AuthenticationOk but not yet the greeting; so has a client that authenticated but named
/// a database other than the proxy's ([`ClientError::UnknownDatabase`]). `end_point`: the
/// channel-binding data of a TLS connection, which offers SCRAM-SHA-256-PLUS first. Not
/// cancel safe.
pub(crate) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    shared: &Shared,
    snapshot: &Snapshot,
    end_point: Option<&[u8]>,
    params: Vec<(String, String)>,
) -> Result<Startup, ClientError> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = get("user")
        .filter(|u| !u.is_empty())
        .ok_or(ClientError::NoUser)?;
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let entry = snapshot.users.get(&user);
    let method = entry.map(|e| e.config.auth).unwrap_or(AuthMethod::Scram);
    let mut out = BytesMut::with_capacity(256);
    let authenticated = match method {
        AuthMethod::Trust => entry.is_some(),
        AuthMethod::Md5 => {
            let salt = random_md5_salt();
            backend::auth_md5(salt, &mut out);
            send(stream, &mut out).await?;
            let body = read_password_frame(stream, buf).await?;
            let response = decode_password_message(&body)?;
            match entry {
                Some(e) => verify_md5(&user, &e.config.password, salt, response),
                None => false,
            }
        }
        AuthMethod::Scram => {
            let secret = match entry {
                Some(e) => e.scram.clone(),
                None => shardgate_auth::ScramSecret::mock(&user, &shared.mock_key),
            };
            let mechanisms: &[&str] = match end_point {
                Some(_) => &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
                None => &[SCRAM_SHA_256],
            };
            backend::auth_sasl(mechanisms, &mut out);
            send(stream, &mut out).await?;
            let body = read_password_frame(stream, buf).await?;
            let (mechanism, data) = decode_sasl_initial_response(&body)?;
            let binding = match (mechanism, end_point) {
                (SCRAM_SHA_256_PLUS, Some(data)) => {
                    ChannelBinding::TlsServerEndPoint(data.to_vec())
                }
                (SCRAM_SHA_256, Some(_)) => ChannelBinding::Declined,
                (SCRAM_SHA_256, None) => ChannelBinding::Unavailable,
                _ => return Err(ClientError::Protocol("unsupported SASL mechanism")),
            };
            let mut server = ScramServer::new(secret).with_channel_binding(binding);
            let first = server
                .client_first(data.unwrap_or_default())
                .map_err(|e| match e {
                    AuthError::ChannelBinding(what) => ClientError::Protocol(what),
                    _ => ClientError::Protocol("malformed SCRAM client-first-message"),
                })?;
            backend::auth_sasl_continue(&first, &mut out);
            send(stream, &mut out).await?;
            let body = read_password_frame(stream, buf).await?;
            match server.client_final(&body) {
                Ok(final_msg) if entry.is_some() => {
                    backend::auth_sasl_final(&final_msg, &mut out);
                    true
                }
                Ok(_) | Err(AuthError::InvalidProof) => false,
                Err(AuthError::ChannelBinding(what)) => return Err(ClientError::Protocol(what)),
                Err(_) => {
                    return Err(ClientError::Protocol(
                        "malformed SCRAM client-final-message",
                    ))
                }
            }
        }
    };
    if !authenticated {
        return Err(ClientError::AuthFailed { user });
    }
    // As on the server, the database is looked up only once authentication has completed
    // (SASLFinal and AuthenticationOk sent): a client told 3D000 mid-exchange, such as libpq
    // over TLS with sslmode=prefer, takes it for a TLS failure and retries without TLS.
    backend::auth_ok(&mut out);
    send(stream, &mut out).await?;
    if database != snapshot.config.database {
        return Err(ClientError::UnknownDatabase(database));
    }
    Ok(Startup { user, params })
}

/// Whether only a server can tell how the client's startup settings read: what it reports
/// for them (`sql,dmy` is `SQL, DMY`), or that it refuses one. Not when each is a setting the
/// server already reports with exactly that value, or a plain application_name (which the
/// server reports as written), as most drivers send: those logins need no server.
pub(crate) fn settings_need_server(
    client_params: &[(String, String)],
    server_params: &[(String, String)],
) -> bool {
    client_params.iter().any(|(name, value)| {
        if NOT_SETTINGS.contains(&name.as_str()) {
            return false;
        }
        let reported_as_is = server_params
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value);
        // The server replaces any other byte with `?`; a long one may be cut.
        let plain_application_name = name.eq_ignore_ascii_case("application_name")
            && value.len() < 64
            && value.bytes().all(|b| (b' '..=b'~').contains(&b));
        !(reported_as_is || plain_application_name)
    })
}

/// Applies the client's settings to a server connection as a checkout does, and reads back
/// what the server reports for each of `server_params` (their names, in order) under them:
/// the values the greeting must carry. The connection then goes back to the pool carrying the
/// client's settings. A setting the server refuses fails with its error
/// ([`ClientError::StartupSetting`]), and nothing of it stays on the connection: the settings
/// and the read run as one implicit transaction. Not cancel safe.
pub(crate) async fn reported_settings(
    pool: &std::sync::Arc<shardgate_pool::NodePool>,
    timeout: std::time::Duration,
    params: &SessionParams,
    server_params: &[(String, String)],
) -> Result<Vec<(String, String)>, ClientError> {
    let mut conn = pool.checkout(timeout).await?;
    let names: Vec<String> = server_params
        .iter()
        .map(|(n, _)| quote_literal(n))
        .collect();
    let sql = format!(
        "{};SELECT pg_catalog.current_setting(n) FROM pg_catalog.unnest(ARRAY[{}]::text[]) \
         WITH ORDINALITY AS t(n, i) ORDER BY i",
        params.sync_sql(),
        names.join(",")
    );
    match conn.first_column(&sql).await {
        // The settings' own set_config rows come first.
        Ok(mut values) if values.len() >= server_params.len() => {
            conn.state_fingerprint = params.fingerprint();
            conn.release();
            let values = values.split_off(values.len() - server_params.len());
            let names = server_params.iter().map(|(n, _)| n.clone());
            Ok(names.zip(values).collect())
        }
        Ok(_) => Err(ClientError::Backend(
            shardgate_pool::BackendError::Protocol {
                addr: conn.addr.clone(),
                what: "a parameter the server reports at login has no value",
            },
        )),
        Err(shardgate_pool::BackendError::Server { fields, .. }) => {
            // The whole text was undone; the connection still carries the settings it had.
            conn.release();
            Err(ClientError::StartupSetting(fields))
        }
        Err(e) => Err(e.into()),
    }
}

/// ParameterStatus (the server's, overridden by what the client asked for),
/// BackendKeyData (shardgate's own key for this client) and ReadyForQuery.
pub(crate) fn greeting(
    server_params: &[(String, String)],
    client_params: &[(String, String)],
    key: shardgate_pool::BackendKey,
    out: &mut BytesMut,
) {
    for (name, value) in server_params {
        let value = client_params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or(value);
        backend::parameter_status(name, value, out);
    }
    backend::backend_key_data(key.pid, key.secret, out);
    backend::ready_for_query(b'I', out);
}
