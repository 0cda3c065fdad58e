//! The replay cases (docs/contract.md section 5a, issue 19), run only with a signing secret: a
//! validly signed push captured on the wire and sent again unchanged, for another user, with
//! another `Token-Version`, or as a DELETE, must be refused with 401, and its victim keep their
//! tokens.
//!
//! A signature covers the body only; a microservice that checks nothing else takes every
//! replay (alice's push gave mallory alice's tokens, a huge version pinned alice, a captured
//! DELETE deleted anyone). Each case follows its replay with a request whose answer shows
//! whether the replay changed anything, so a microservice that answers 401 but applies the push
//! anyway fails too.

use reqwest::Method;

use super::{Step, cleanup, run_steps, tokens, user_id};
use crate::{Target, client::Push, report::CaseResult};

/// The version the replay-version case claims: far above anything the case pushes, so its
/// cleanup (one above it) works even on a microservice that took the replay. Not `i64::MAX`,
/// which would pin the case's user for good on such a microservice.
const REPLAYED_VERSION: u64 = 1000;

/// Alice's signed connect, replayed unchanged to mallory's URL: refused, and mallory still has
/// nothing (a DELETE of mallory finds nothing to delete).
pub(super) async fn to_another_user(target: &Target) -> CaseResult {
    let case = "replay-user";
    let (alice, mallory) = (user_id(target, case), user_id(target, case));
    let captured = target.wire(&Push::connect(&alice, tokens(case, 1), 1));
    let replayed = captured.clone().map(|wire| wire.for_user(&mallory));
    let steps = vec![
        Step::status(captured, 200),
        Step::status(replayed, 401),
        Step::status(Push::delete(&mallory, 2), 404),
    ];
    run_steps(target, case, &alice, steps, Some(2)).await
}

/// Alice's signed connect, replayed unchanged but for a much higher `Token-Version`: refused,
/// and alice is not pinned (her next real version is taken).
pub(super) async fn with_another_version(target: &Target) -> CaseResult {
    let case = "replay-version";
    let alice = user_id(target, case);
    let captured = target.wire(&Push::connect(&alice, tokens(case, 1), 1));
    let replayed = captured
        .clone()
        .map(|wire| wire.with_version(REPLAYED_VERSION));
    let steps = vec![
        Step::status(captured, 200),
        Step::status(replayed, 401),
        Step::status(Push::connect(&alice, tokens(case, 2), 2), 200),
    ];
    run_steps(target, case, &alice, steps, Some(REPLAYED_VERSION + 1)).await
}

/// Alice's signed DELETE, replayed unchanged against mallory: refused, and mallory's tokens are
/// still there (a DELETE of mallory deletes them).
pub(super) async fn delete_to_another_user(target: &Target) -> CaseResult {
    let case = "replay-delete-user";
    let (alice, mallory) = (user_id(target, case), user_id(target, case));
    let captured = target.wire(&Push::delete(&alice, 2));
    let replayed = captured.clone().map(|wire| wire.for_user(&mallory));
    let steps = vec![
        Step::status(Push::connect(&alice, tokens(case, 1), 1), 200),
        Step::status(Push::connect(&mallory, tokens(case, 1), 1), 200),
        Step::status(captured, 200),
        Step::status(replayed, 401),
        Step::status(Push::delete(&mallory, 3), 200),
    ];
    let result = run_steps(target, case, &alice, steps, None).await;
    // The steps delete both users; only if one went wrong may something be left.
    if !result.passed {
        cleanup(target, &alice, 4).await;
        cleanup(target, &mallory, 4).await;
    }
    result
}

/// Alice's next signed connect, captured before it lands and sent unchanged as a DELETE of
/// alice: refused, and alice's tokens are still there (a DELETE of alice deletes them).
pub(super) async fn connect_as_delete(target: &Target) -> CaseResult {
    let case = "replay-as-delete";
    let alice = user_id(target, case);
    let captured = target.wire(&Push::connect(&alice, tokens(case, 2), 2));
    let as_delete = captured.map(|wire| wire.with_method(Method::DELETE));
    let steps = vec![
        Step::status(Push::connect(&alice, tokens(case, 1), 1), 200),
        Step::status(as_delete, 401),
        Step::status(Push::delete(&alice, 3), 200),
    ];
    let result = run_steps(target, case, &alice, steps, None).await;
    if !result.passed {
        cleanup(target, &alice, 4).await;
    }
    result
}
