//! The `users` section: who may connect, and the credentials shardgate reuses towards backends.

use std::fmt;

use serde_yaml_ng::Value;

use crate::error::Problems;
use crate::tree::{self, Seen, Table};

/// One user. Clients authenticate against `password`; shardgate logs in to every backend with
/// the same name and password.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    pub auth: AuthMethod,
}

/// Hand-written so the password never lands in a log line through `{:?}`.
impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("auth", &self.auth)
            .finish()
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Scram,
    Md5,
    Trust,
}

impl AuthMethod {
    const CHOICES: &'static [(&'static str, AuthMethod)] = &[
        ("scram", AuthMethod::Scram),
        ("md5", AuthMethod::Md5),
        ("trust", AuthMethod::Trust),
    ];
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Scram => "scram",
            AuthMethod::Md5 => "md5",
            AuthMethod::Trust => "trust",
        })
    }
}

/// Reads the `users` list: at least one user, names unique.
pub(crate) fn read(value: &Value, path: &str, problems: &mut Problems) -> Option<Vec<UserConfig>> {
    let mut names = Seen::new("user name");
    let users = tree::list(value, path, problems, |item, item_path, problems| {
        read_user(item, item_path, &mut names, problems)
    })?;
    if users.is_empty() {
        problems.push(path, "must list at least one user");
        return None;
    }
    Some(users)
}

fn read_user(
    value: &Value,
    path: &str,
    names: &mut Seen<String>,
    problems: &mut Problems,
) -> Option<UserConfig> {
    let mut table = Table::open(value, path, problems)?;
    let name = table.required("name", problems, |v, name_path, problems| {
        let name = tree::non_empty_string(v, name_path, problems)?;
        names
            .insert(name.clone(), name_path, problems)
            .then_some(name)
    });
    let password = table.required("password", problems, tree::secret_string);
    let auth = table.or_default(
        "auth",
        AuthMethod::Scram,
        problems,
        |v, auth_path, problems| {
            tree::choice(v, auth_path, "auth method", AuthMethod::CHOICES, problems)
        },
    );
    table.finish(problems);

    let (password, auth) = (password?, auth?);
    // An empty password can never pass SCRAM or MD5, and PostgreSQL treats one as "no password".
    if password.is_empty() && auth != AuthMethod::Trust {
        problems.push(
            &tree::key_path(path, "password"),
            format!("must not be empty when auth is {auth}"),
        );
        return None;
    }
    Some(UserConfig {
        name: name?,
        password,
        auth,
    })
}
