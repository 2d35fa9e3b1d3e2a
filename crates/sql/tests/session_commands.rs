//! Every `SessionCommand` form, in any case, with comments and odd whitespace.

use shardgate_sql::{session_command, session_command_with, LexOptions, SessionCommand};

fn cmd(s: &str) -> Option<SessionCommand> {
    session_command(s.as_bytes())
}

fn set(name: &str, value: &str) -> Option<SessionCommand> {
    Some(SessionCommand::Set {
        name: name.into(),
        value: value.into(),
    })
}

fn reset(name: &str) -> Option<SessionCommand> {
    Some(SessionCommand::Reset { name: name.into() })
}

#[test]
fn generic_set() {
    assert_eq!(cmd("SET timezone TO 'UTC'"), set("timezone", "'UTC'"));
    assert_eq!(
        cmd("set Statement_Timeout = 10s"),
        set("statement_timeout", "10s")
    );
    assert_eq!(
        cmd("SET SESSION work_mem TO '64MB'"),
        set("work_mem", "'64MB'")
    );
    assert_eq!(
        cmd("SET search_path TO public, \"My Schema\""),
        set("search_path", "public, \"My Schema\"")
    );
    assert_eq!(
        cmd("SET shardgate.target = 'replica'"),
        set("shardgate.target", "'replica'")
    );
    assert_eq!(cmd("SET MyApp . Tenant TO 42"), set("myapp.tenant", "42"));
    assert_eq!(
        cmd(r#"SET "MyApp"."Te""nant" TO 42"#),
        set("MyApp.Te\"nant", "42")
    );
    assert_eq!(cmd("SET x TO 'a;b', E'\\'' "), set("x", "'a;b', E'\\''"));
    // A parameter named like a special form's keyword is still a parameter.
    assert_eq!(cmd("SET role TO admin"), set("role", "admin"));
    assert_eq!(cmd("SET session TO 1"), set("session", "1"));
    assert_eq!(cmd("SET local.x = 1"), set("local.x", "1"));
}

#[test]
fn comments_and_whitespace_anywhere() {
    assert_eq!(
        cmd("/* hint */ SeT\n\t-- c\n  application_name /* x */ =\n 'a b' -- trailing"),
        set("application_name", "'a b'")
    );
    assert_eq!(
        cmd("set x to 1 /* inner */ , 2 /* tail */"),
        set("x", "1 /* inner */ , 2")
    );
    assert_eq!(cmd("set x to /* only */"), None);
}

#[test]
fn set_to_default_is_reset() {
    assert_eq!(cmd("SET work_mem TO DEFAULT"), reset("work_mem"));
    assert_eq!(cmd("set work_mem = default /* c */"), reset("work_mem"));
    assert_eq!(
        cmd("SET work_mem = 'default'"),
        set("work_mem", "'default'")
    );
    assert_eq!(
        cmd("SET work_mem = default, 1"),
        set("work_mem", "default, 1")
    );
}

#[test]
fn special_forms() {
    assert_eq!(
        cmd("SET TIME ZONE 'Europe/Rome'"),
        set("timezone", "'Europe/Rome'")
    );
    assert_eq!(cmd("set session time zone -7"), set("timezone", "-7"));
    assert_eq!(
        cmd("SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE"),
        set("timezone", "INTERVAL '+02:00' HOUR TO MINUTE")
    );
    assert_eq!(cmd("SET TIME ZONE LOCAL"), reset("timezone"));
    assert_eq!(cmd("SET TIME ZONE default"), reset("timezone"));
    assert_eq!(cmd("SET SCHEMA 'app'"), set("search_path", "'app'"));
    assert_eq!(cmd("SET NAMES 'UTF8'"), set("client_encoding", "'UTF8'"));
    assert_eq!(cmd("SET NAMES DEFAULT"), reset("client_encoding"));
    assert_eq!(cmd("SET NAMES"), reset("client_encoding"));
    assert_eq!(cmd("SET ROLE reporting"), set("role", "reporting"));
    assert_eq!(cmd("set role 'Reporting'"), set("role", "'Reporting'"));
    assert_eq!(cmd("SET ROLE NONE"), set("role", "NONE"));
    assert_eq!(
        cmd("SET SESSION AUTHORIZATION alice"),
        set("session_authorization", "alice")
    );
    assert_eq!(
        cmd("set session authorization default"),
        reset("session_authorization")
    );
    assert_eq!(cmd("SET XML OPTION DOCUMENT"), set("xmloption", "DOCUMENT"));
    assert_eq!(cmd("SET ROLE"), None);
    assert_eq!(cmd("SET SCHEMA"), None);
    assert_eq!(cmd("SET TIME 'x'"), None);
}

#[test]
fn transaction_scoped_forms_are_local() {
    for s in [
        "SET LOCAL work_mem = '1MB'",
        "set local time zone 'UTC'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET CONSTRAINTS ALL DEFERRED",
        "SET work_mem FROM CURRENT",
        "SET a.b FROM CURRENT",
        "RESET TRANSACTION ISOLATION LEVEL",
    ] {
        assert_eq!(cmd(s), Some(SessionCommand::Local), "{s}");
    }
}

#[test]
fn reset_forms() {
    assert_eq!(cmd("RESET work_mem"), reset("work_mem"));
    assert_eq!(cmd("reset  Shardgate.Target"), reset("shardgate.target"));
    assert_eq!(cmd("RESET TIME ZONE"), reset("timezone"));
    assert_eq!(
        cmd("RESET SESSION AUTHORIZATION"),
        reset("session_authorization")
    );
    assert_eq!(cmd("RESET ROLE"), reset("role"));
    assert_eq!(cmd("RESET ALL"), Some(SessionCommand::ResetAll));
    assert_eq!(cmd("/**/ reset -- x\n all"), Some(SessionCommand::ResetAll));
    assert_eq!(cmd("RESET"), None);
    assert_eq!(cmd("RESET a b"), None);
}

#[test]
fn discard_forms() {
    assert_eq!(cmd("DISCARD ALL"), Some(SessionCommand::DiscardAll));
    assert_eq!(cmd("discard all -- bye"), Some(SessionCommand::DiscardAll));
    for s in [
        "DISCARD PLANS",
        "discard sequences",
        "Discard Temp",
        "DISCARD TEMPORARY",
    ] {
        assert_eq!(cmd(s), Some(SessionCommand::Discard), "{s}");
    }
    assert_eq!(cmd("DISCARD"), None);
    assert_eq!(cmd("DISCARD ALL PLANS"), None);
    assert_eq!(cmd("DISCARD everything"), None);
}

#[test]
fn deallocate_forms() {
    let named = |n: &str| {
        Some(SessionCommand::Deallocate {
            name: Some(n.into()),
        })
    };
    assert_eq!(cmd("DEALLOCATE stmt1"), named("stmt1"));
    assert_eq!(cmd("deallocate prepare S_1"), named("s_1"));
    assert_eq!(cmd("DEALLOCATE \"S_1\""), named("S_1"));
    assert_eq!(cmd("DEALLOCATE \"ALL\""), named("ALL"));
    assert_eq!(cmd("DEALLOCATE prepare"), named("prepare"));
    let all = Some(SessionCommand::Deallocate { name: None });
    assert_eq!(cmd("DEALLOCATE ALL"), all);
    assert_eq!(cmd("deallocate prepare all"), all);
    assert_eq!(cmd("DEALLOCATE"), None);
    assert_eq!(cmd("DEALLOCATE a b"), None);
}

#[test]
fn other_statements_are_none() {
    for s in [
        "",
        "   ",
        "-- SET x TO 1",
        "SELECT 1",
        "SHOW work_mem",
        "UPDATE t SET x = 1",
        "settle",
        "\"SET\" x TO 1",
        "SET",
        "SET x 1",
        "SET U&\"x\" TO 1",
    ] {
        assert_eq!(cmd(s), None, "{s}");
    }
}

#[test]
fn non_utf8_gives_none_and_scs_off_changes_value_end() {
    assert_eq!(session_command(b"SET x TO '\xff'"), None);
    let stmt = br"SET x TO 'a\' -- ' ";
    assert_eq!(session_command(stmt), set("x", r"'a\'"));
    let off = LexOptions {
        standard_conforming_strings: false,
    };
    assert_eq!(session_command_with(stmt, off), set("x", r"'a\' -- '"));
}

#[test]
fn transaction_commands() {
    use shardgate_sql::{transaction_command, TransactionCommand as T};
    let t = |s: &str| transaction_command(s.as_bytes());
    let name = |n: &str| n.to_owned();
    assert_eq!(t("BEGIN"), Some(T::Begin));
    assert_eq!(t("begin isolation level serializable"), Some(T::Begin));
    assert_eq!(t("START TRANSACTION READ ONLY"), Some(T::Begin));
    assert_eq!(t("START"), None);
    assert_eq!(t("COMMIT"), Some(T::Commit { chain: false }));
    assert_eq!(t("end work"), Some(T::Commit { chain: false }));
    assert_eq!(t("COMMIT AND CHAIN"), Some(T::Commit { chain: true }));
    assert_eq!(t("COMMIT AND NO CHAIN"), Some(T::Commit { chain: false }));
    assert_eq!(
        t("ROLLBACK TRANSACTION AND CHAIN"),
        Some(T::Rollback { chain: true })
    );
    assert_eq!(t("ABORT"), Some(T::Rollback { chain: false }));
    assert_eq!(t("COMMIT PREPARED 'x'"), None);
    assert_eq!(t("ROLLBACK PREPARED 'x'"), None);
    assert_eq!(t("PREPARE TRANSACTION 'x'"), Some(T::Prepare));
    assert_eq!(t("PREPARE p AS SELECT 1"), None);
    assert_eq!(t("SAVEPOINT Sp1"), Some(T::Savepoint { name: name("sp1") }));
    assert_eq!(
        t("SAVEPOINT \"Sp1\""),
        Some(T::Savepoint { name: name("Sp1") })
    );
    assert_eq!(t("RELEASE a"), Some(T::Release { name: name("a") }));
    assert_eq!(
        t("release /* c */ savepoint a"),
        Some(T::Release { name: name("a") })
    );
    assert_eq!(t("ROLLBACK TO a"), Some(T::RollbackTo { name: name("a") }));
    assert_eq!(
        t("ROLLBACK WORK TO SAVEPOINT a"),
        Some(T::RollbackTo { name: name("a") })
    );
    // Cut to 63 bytes as the server cuts every identifier, on a character boundary.
    let long = format!("{}_tail", "s".repeat(63));
    assert_eq!(
        t(&format!("SAVEPOINT {long}")),
        Some(T::Savepoint {
            name: "s".repeat(63)
        })
    );
    let accented = format!("\"{}é\"", "s".repeat(62));
    assert_eq!(
        t(&format!("ROLLBACK TO {accented}")),
        Some(T::RollbackTo {
            name: "s".repeat(62)
        })
    );
    assert_eq!(t("SELECT 1"), None);
}
