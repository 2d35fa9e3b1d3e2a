//! Human text for classification outcomes, shared by logs, the decision log and the
//! admin API.

use shardgate_router::Reason;
use shardgate_sql::{Classification, WhyWrite};

/// A routing reason as text: a write names its cause, and "no routable replica" names
/// each replica and why it is excluded (`detail`).
pub(crate) fn reason_text(
    reason: Reason,
    class: Option<&Classification>,
    detail: Option<&str>,
) -> String {
    match (reason, class.and_then(|c| c.write.as_ref()), detail) {
        (Reason::Write, Some(why), _) => format!("write: {}", why_write(why)),
        (Reason::NoRoutableReplica, _, Some(d)) => format!("{reason} ({d})"),
        (r, _, _) => r.to_string(),
    }
}

/// Why a statement must run on the primary, in words.
pub(crate) fn why_write(why: &WhyWrite) -> String {
    match why {
        WhyWrite::Dml => "INSERT/UPDATE/DELETE/MERGE".to_owned(),
        WhyWrite::CopyFrom => "COPY FROM".to_owned(),
        WhyWrite::Ddl => "DDL".to_owned(),
        WhyWrite::Maintenance => "maintenance command".to_owned(),
        WhyWrite::Grant => "GRANT/REVOKE".to_owned(),
        WhyWrite::Lock => "LOCK".to_owned(),
        WhyWrite::Call => "CALL".to_owned(),
        WhyWrite::Do => "DO block".to_owned(),
        WhyWrite::ListenNotify => "LISTEN/NOTIFY".to_owned(),
        WhyWrite::Locking => "SELECT ... FOR UPDATE/SHARE".to_owned(),
        WhyWrite::WritableCte => "data-modifying WITH".to_owned(),
        WhyWrite::SelectInto => "SELECT ... INTO".to_owned(),
        WhyWrite::WriteFunction(f) => format!("calls {f}()"),
        WhyWrite::TempTable => "temporary table".to_owned(),
        WhyWrite::Unparsed => "not understood by the parser (fail closed)".to_owned(),
        WhyWrite::CopyFromStdinThenMore => "COPY FROM STDIN followed by more statements".to_owned(),
        WhyWrite::Other(what) => (*what).to_owned(),
    }
}
