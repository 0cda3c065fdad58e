//! The cases of SEED.md's contract and docs/contract.md section 5a, each on a user of its own, each
//! judged by the statuses (and, where the seed shows them, the bodies) the microservice answers.
//! The replay cases are in `replay`.

use rand::seq::SliceRandom;
use serde_json::{Value, json};

mod replay;

use crate::{
    Target,
    client::{Answer, Bearer, Push, Signing, Wire},
    report::{CaseResult, Report},
};

/// Length of the longest case name, which is part of its user id.
pub(crate) const LONGEST_CASE_NAME: usize = "missing-refresh_token".len();

/// Hex digits after the case name in a user id, so runs never share a user.
pub(crate) const RANDOM_SUFFIX_LEN: usize = 8;

/// The fields SEED.md's connect body requires.
const FIELDS: [&str; 4] = ["access_token", "refresh_token", "token_expiry", "scope"];

const SCOPE: &str =
    "https://www.googleapis.com/auth/calendar https://www.googleapis.com/auth/calendar.events";

/// How many versions the concurrent case pushes at once.
const CONCURRENT_PUSHES: u64 = 20;

/// What a group of cases needs to run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// `--token`.
    Token,
    /// `--signing-secret`.
    SigningSecret,
}

/// Every case, in the order [`run_all`] runs them, grouped by what they expect: the one list
/// of them, from which the help text and the notes on cases not run are made.
const CASES: &[(&[&str], &str, Needs)] = &[
    (&["connect"], "the seed's body and answer", Needs::Nothing),
    (
        &[
            "missing-<field> for each of the four fields",
            "bad-token_expiry",
        ],
        "400",
        Needs::Nothing,
    ),
    (&["delete-known"], "the seed's answer", Needs::Nothing),
    (&["delete-unknown"], "404", Needs::Nothing),
    (
        &["stale-version", "late-after-delete"],
        "409, and nothing changed",
        Needs::Nothing,
    ),
    (
        &["bearer-missing", "bearer-wrong"],
        "401, with --token",
        Needs::Token,
    ),
    (
        &["signature-missing", "signature-tampered", "signature-old"],
        "401, with --signing-secret",
        Needs::SigningSecret,
    ),
    (
        &[
            "replay-user",
            "replay-version",
            "replay-delete-user",
            "replay-as-delete",
        ],
        "401, and nothing changed, with --signing-secret",
        Needs::SigningSecret,
    ),
    (
        &["concurrent-versions"],
        "20 at once, the newest wins",
        Needs::Nothing,
    ),
];

/// `a`, `a and b`, `a, b and c`.
fn listed<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// The cases that need `needs`, listed.
fn needing(needs: Needs) -> String {
    listed(
        CASES
            .iter()
            .filter(|(_, _, n)| *n == needs)
            .flat_map(|(names, _, _)| names.iter().copied()),
    )
}

/// The long help of `tokenwarden check-microservice`: what it does and every case.
pub fn help() -> String {
    let groups: Vec<String> = CASES
        .iter()
        .map(|(names, expects, _)| format!("{} ({expects})", listed(names.iter().copied())))
        .collect();
    format!(
        "Run the microservice contract's cases against a microservice and print a pass/fail \
         table.\n\nCases: {}. Each case uses a user id of its own and deletes it afterwards. \
         Exit code 0 only when every case passed, 1 when one failed, 2 on unusable flags.",
        groups.join(", ")
    )
}

/// Runs every case that the flags allow, in order.
pub(crate) async fn run_all(target: &Target) -> Report {
    let mut report = Report::default();
    report.push(connect(target).await);
    for field in FIELDS {
        report.push(missing_field(target, field).await);
    }
    report.push(bad_token_expiry(target).await);
    report.push(delete_known(target).await);
    report.push(delete_unknown(target).await);
    report.push(stale_version(target).await);
    report.push(late_after_delete(target).await);
    if target.bearer.is_some() {
        report.push(bearer_refused(target, "bearer-missing", Bearer::Missing).await);
        report.push(bearer_refused(target, "bearer-wrong", Bearer::Wrong).await);
    } else {
        report.note(format!(
            "{} not run: no --token given",
            needing(Needs::Token)
        ));
    }
    if target.keys.is_empty() {
        report.note(format!(
            "{} not run: no --signing-secret given",
            needing(Needs::SigningSecret)
        ));
    } else {
        report.push(signature_refused(target, "signature-missing", Signing::Missing).await);
        report.push(signature_refused(target, "signature-tampered", Signing::TamperedBody).await);
        report
            .push(signature_refused(target, "signature-old", Signing::TimestampOffset(-600)).await);
        report.push(replay::to_another_user(target).await);
        report.push(replay::with_another_version(target).await);
        report.push(replay::delete_to_another_user(target).await);
        report.push(replay::connect_as_delete(target).await);
    }
    report.push(concurrent_versions(target).await);
    report
}

/// A user id of the case's own: `<prefix><case>-<random>`.
fn user_id(target: &Target, case: &str) -> String {
    debug_assert!(case.len() <= LONGEST_CASE_NAME, "{case}");
    let suffix = format!("{:016x}", rand::random::<u64>());
    format!(
        "{}{case}-{}",
        target.user_prefix,
        &suffix[..RANDOM_SUFFIX_LEN]
    )
}

/// A connect body as SEED.md shows it, with an expiry an hour ahead.
fn tokens(case: &str, version: u64) -> Value {
    let expiry = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "access_token": format!("ya29.tokenwarden-check-{case}-v{version}"),
        "refresh_token": "1//tokenwarden-check-refresh",
        "token_expiry": expiry,
        "scope": SCOPE,
    })
}

/// SEED.md's connect success body for `body` pushed for `user_id`.
fn connected(user_id: &str, body: &Value) -> Value {
    json!({
        "success": true,
        "message": "Google Calendar connected successfully",
        "user_id": user_id,
        "token_expiry": body["token_expiry"],
    })
}

/// SEED.md's disconnect success body.
fn disconnected(user_id: &str) -> Value {
    json!({
        "success": true,
        "message": "Google Calendar disconnected successfully",
        "user_id": user_id,
    })
}

/// What a step sends: a push built as tokenwarden would, or one already on the wire, replayed.
enum Sent {
    Push(Push),
    Wire(Result<Wire, String>),
}

impl From<Push> for Sent {
    fn from(push: Push) -> Self {
        Self::Push(push)
    }
}

impl From<Result<Wire, String>> for Sent {
    fn from(wire: Result<Wire, String>) -> Self {
        Self::Wire(wire)
    }
}

/// One request of a case and the answer it must get.
struct Step {
    sent: Sent,
    /// Any of these statuses is the expected one (one, but for a few cases).
    statuses: Vec<u16>,
    /// The exact body expected too, where SEED.md shows it.
    body: Option<Value>,
}

impl Step {
    fn status(sent: impl Into<Sent>, status: u16) -> Self {
        Self::any_status(sent, &[status])
    }

    fn any_status(sent: impl Into<Sent>, statuses: &[u16]) -> Self {
        Self {
            sent: sent.into(),
            statuses: statuses.to_vec(),
            body: None,
        }
    }

    fn with_body(push: Push, status: u16, body: Value) -> Self {
        Self {
            body: Some(body),
            ..Self::status(push, status)
        }
    }

    fn expected(&self) -> String {
        let statuses: Vec<String> = self.statuses.iter().map(u16::to_string).collect();
        let statuses = statuses.join(" or ");
        match self.body {
            Some(_) => format!("{statuses} + seed body"),
            None => statuses,
        }
    }

    async fn send(&self, target: &Target) -> Answer {
        match &self.sent {
            Sent::Push(push) => target.send(push).await,
            Sent::Wire(Ok(wire)) => target.deliver(wire).await,
            Sent::Wire(Err(reason)) => Answer::Failed(reason.clone()),
        }
    }

    /// How the answer reads in the table, and whether it is the expected one.
    fn judge(&self, answer: &Answer) -> (String, bool, Option<String>) {
        let status_ok = answer.status().is_some_and(|s| self.statuses.contains(&s));
        match &self.body {
            Some(expected) if status_ok => {
                if answer.body() == Some(expected) {
                    (self.expected(), true, None)
                } else {
                    let got = answer
                        .body()
                        .map_or("not JSON".to_owned(), Value::to_string);
                    let detail = format!("expected body {expected}, got {got}");
                    (
                        format!("{} + other body", answer.short()),
                        false,
                        Some(detail),
                    )
                }
            }
            _ => (answer.short(), status_ok, None),
        }
    }
}

/// Sends `steps` in order (all of them, so the table shows every answer), then deletes the
/// user with `cleanup_version` unless it is `None`.
async fn run_steps(
    target: &Target,
    case: &'static str,
    user_id: &str,
    steps: Vec<Step>,
    cleanup_version: Option<u64>,
) -> CaseResult {
    let mut got = Vec::new();
    let mut passed = true;
    let mut details = Vec::new();
    for step in &steps {
        let answer = step.send(target).await;
        let (shown, ok, detail) = step.judge(&answer);
        got.push(shown);
        passed &= ok;
        details.extend(detail);
    }
    if let Some(version) = cleanup_version {
        cleanup(target, user_id, version).await;
    }
    let expected: Vec<String> = steps.iter().map(Step::expected).collect();
    CaseResult {
        case: case.to_owned(),
        expected: expected.join(", "),
        got: got.join(", "),
        passed,
        detail: (!details.is_empty()).then(|| details.join("; ")),
    }
}

/// Deletes what a case may have left, with a version newer than any it pushed; the answer
/// (200, or 404 when nothing was stored) is not judged.
async fn cleanup(target: &Target, user_id: &str, version: u64) {
    let _ = target.send(&Push::delete(user_id, version)).await;
}

/// The seed's connect body is accepted with the seed's answer.
async fn connect(target: &Target) -> CaseResult {
    let case = "connect";
    let user = user_id(target, case);
    let body = tokens(case, 1);
    let expected = connected(&user, &body);
    let steps = vec![Step::with_body(
        Push::connect(&user, body, 1),
        200,
        expected,
    )];
    run_steps(target, case, &user, steps, Some(2)).await
}

/// A connect body without `field` is refused with 400; when signed, a receiver may refuse it
/// with 401 before reading the fields, as a signed connect body must carry the seed's four
/// (docs/contract.md section 5a: a signed body that does not fit its method).
async fn missing_field(target: &Target, field: &'static str) -> CaseResult {
    let case = match field {
        "access_token" => "missing-access_token",
        "refresh_token" => "missing-refresh_token",
        "token_expiry" => "missing-token_expiry",
        _ => "missing-scope",
    };
    let user = user_id(target, case);
    let mut body = tokens(case, 1);
    if let Some(fields) = body.as_object_mut() {
        fields.remove(field);
    }
    let push = Push::connect(&user, body, 1);
    let step = if target.keys.is_empty() {
        Step::status(push, 400)
    } else {
        Step::any_status(push, &[400, 401])
    };
    run_steps(target, case, &user, vec![step], Some(2)).await
}

/// A `token_expiry` that is not a date is refused with 400.
async fn bad_token_expiry(target: &Target) -> CaseResult {
    let case = "bad-token_expiry";
    let user = user_id(target, case);
    let mut body = tokens(case, 1);
    body["token_expiry"] = Value::from("not-a-date");
    let steps = vec![Step::status(Push::connect(&user, body, 1), 400)];
    run_steps(target, case, &user, steps, Some(2)).await
}

/// Deleting a user with tokens answers the seed's body.
async fn delete_known(target: &Target) -> CaseResult {
    let case = "delete-known";
    let user = user_id(target, case);
    let steps = vec![
        Step::status(Push::connect(&user, tokens(case, 1), 1), 200),
        Step::with_body(Push::delete(&user, 2), 200, disconnected(&user)),
    ];
    run_steps(target, case, &user, steps, None).await
}

/// Deleting a user without tokens answers 404.
async fn delete_unknown(target: &Target) -> CaseResult {
    let case = "delete-unknown";
    let user = user_id(target, case);
    let steps = vec![Step::status(Push::delete(&user, 1), 404)];
    run_steps(target, case, &user, steps, None).await
}

/// An older version than the one held is refused, and changes nothing: the newer version,
/// pushed again, is still refused as not newer (had the stale one replaced it, it would be
/// accepted), and the next version is accepted.
async fn stale_version(target: &Target) -> CaseResult {
    let case = "stale-version";
    let user = user_id(target, case);
    let steps = vec![
        Step::status(Push::connect(&user, tokens(case, 2), 2), 200),
        Step::status(Push::connect(&user, tokens(case, 1), 1), 409),
        Step::status(Push::connect(&user, tokens(case, 2), 2), 409),
        Step::status(Push::connect(&user, tokens(case, 3), 3), 200),
    ];
    run_steps(target, case, &user, steps, Some(4)).await
}

/// A push overtaken by a DELETE lands late: refused, and the tokens stay gone (the next DELETE
/// finds nothing).
async fn late_after_delete(target: &Target) -> CaseResult {
    let case = "late-after-delete";
    let user = user_id(target, case);
    let steps = vec![
        Step::status(Push::connect(&user, tokens(case, 1), 1), 200),
        Step::status(Push::delete(&user, 3), 200),
        Step::status(Push::connect(&user, tokens(case, 2), 2), 409),
        Step::status(Push::delete(&user, 4), 404),
    ];
    run_steps(target, case, &user, steps, None).await
}

/// A push without the configured bearer token, or with a wrong one, is refused with 401.
async fn bearer_refused(target: &Target, case: &'static str, bearer: Bearer) -> CaseResult {
    let user = user_id(target, case);
    let push = Push::connect(&user, tokens(case, 1), 1).with_bearer(bearer);
    run_steps(target, case, &user, vec![Step::status(push, 401)], Some(2)).await
}

/// A push unsigned, tampered with after signing, or signed 10 minutes ago is refused with 401.
async fn signature_refused(target: &Target, case: &'static str, signing: Signing) -> CaseResult {
    let user = user_id(target, case);
    let push = Push::connect(&user, tokens(case, 1), 1).with_signing(signing);
    run_steps(target, case, &user, vec![Step::status(push, 401)], Some(2)).await
}

/// Versions 1..=20 pushed at once in random order: each is accepted or refused as stale, 20 is
/// accepted (nothing newer exists), and afterwards the microservice holds 20: pushing 20 again
/// is refused and 21 is accepted.
async fn concurrent_versions(target: &Target) -> CaseResult {
    let case = "concurrent-versions";
    let user = user_id(target, case);
    let mut versions: Vec<u64> = (1..=CONCURRENT_PUSHES).collect();
    versions.shuffle(&mut rand::thread_rng());
    let pushes = versions.iter().map(|&version| {
        let push = Push::connect(&user, tokens(case, version), version);
        async move { (version, target.send(&push).await) }
    });
    let answers = futures::future::join_all(pushes).await;
    let again = target
        .send(&Push::connect(
            &user,
            tokens(case, CONCURRENT_PUSHES),
            CONCURRENT_PUSHES,
        ))
        .await;
    let next = CONCURRENT_PUSHES + 1;
    let newer = target
        .send(&Push::connect(&user, tokens(case, next), next))
        .await;
    cleanup(target, &user, next + 1).await;

    let newest = answers
        .iter()
        .find(|(version, _)| *version == CONCURRENT_PUSHES)
        .map(|(_, answer)| answer);
    let unexpected = answers
        .iter()
        .any(|(_, a)| !matches!(a.status(), Some(200 | 409)));
    let newest_status = newest.and_then(Answer::status);
    let passed = !unexpected
        && newest_status == Some(200)
        && again.status() == Some(409)
        && newer.status() == Some(200);
    // How many got each answer, e.g. "6x200 14x409".
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for (_, answer) in &answers {
        *tally.entry(answer.short()).or_default() += 1;
    }
    let tally: Vec<String> = tally.iter().map(|(a, n)| format!("{n}x{a}")).collect();
    let newest_shown = newest.map_or_else(|| "none".to_owned(), Answer::short);
    let got = format!(
        "{}, v{CONCURRENT_PUSHES} {newest_shown}; v{CONCURRENT_PUSHES} again {}; v{next} {}",
        tally.join(" "),
        again.short(),
        newer.short()
    );
    CaseResult {
        case: case.to_owned(),
        expected: format!(
            "v1..v{CONCURRENT_PUSHES} at once: 200 or 409, v{CONCURRENT_PUSHES} 200; \
             v{CONCURRENT_PUSHES} again 409; v{next} 200"
        ),
        got,
        passed,
        detail: None,
    }
}
