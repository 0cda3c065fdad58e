//! Why a call to Google failed, in two layers: what the caller should do next (the
//! [`GoogleError`] variant: try again later, the user must reconnect, or refused for a reason
//! that is not the user's) and the precise reason ([`FailureReason`], a closed set, so it can
//! label a metric without letting Google's answer invent new series). docs/contract.md section 9
//! decides which reason falls where: only `invalid_grant` and `admin_policy_enforced` end a user's
//! grant.

use oauth2::{
    RequestTokenError,
    basic::{BasicErrorResponse, BasicErrorResponseType},
};

use super::http_client::HttpError;

/// The precise reason a call to Google failed. A fixed set: Google's own error codes outside
/// it are [`FailureReason::Other`], so a metric labelled by it has a bounded number of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// `invalid_grant`: revoked, unused for six months, password change, token limit, a
    /// "Testing" app's 7 days, or a time-limited grant past its end.
    InvalidGrant,
    /// `admin_policy_enforced`: the Workspace admin forbids this client or scope.
    AdminPolicyEnforced,
    /// `invalid_client`: our client id or secret is wrong (our configuration, not the user).
    InvalidClient,
    /// `unauthorized_client`: the client may not use this grant type.
    UnauthorizedClient,
    /// `deleted_client`: the OAuth client was deleted (e.g. unused for six months).
    DeletedClient,
    /// HTTP 429.
    RateLimited,
    /// HTTP 5xx, or a body saying `internal_failure`, `server_error`, `temporarily_unavailable`.
    ServerError,
    /// No answer in time.
    Timeout,
    /// The connection failed or broke.
    Network,
    /// Anything else: another error code, an unparseable answer, an unexpected status.
    Other,
}

impl FailureReason {
    /// Every reason, for metrics that show each series from the start.
    pub const ALL: [Self; 10] = [
        Self::InvalidGrant,
        Self::AdminPolicyEnforced,
        Self::InvalidClient,
        Self::UnauthorizedClient,
        Self::DeletedClient,
        Self::RateLimited,
        Self::ServerError,
        Self::Timeout,
        Self::Network,
        Self::Other,
    ];

    /// The reason as a metric label: a constant, never text from Google's answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidGrant => "invalid_grant",
            Self::AdminPolicyEnforced => "admin_policy_enforced",
            Self::InvalidClient => "invalid_client",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::DeletedClient => "deleted_client",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::Other => "other",
        }
    }
}

/// One failure: its reason and a short description for logs and the console. The
/// description holds at most Google's error code or our own words, never a body or a token.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: FailureReason,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }

    /// A request that got no answer, told apart as timeout or network failure.
    pub(super) fn from_reqwest(error: &reqwest::Error) -> Self {
        let reason = if error.is_timeout() {
            FailureReason::Timeout
        } else {
            FailureReason::Network
        };
        Self::new(reason, super::http_client::describe(error))
    }

    /// An answer with a failing HTTP status and no error code worth reading.
    pub(super) fn from_status(status: reqwest::StatusCode, what: &str) -> Self {
        let reason = if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            FailureReason::RateLimited
        } else if status.is_server_error() {
            FailureReason::ServerError
        } else {
            FailureReason::Other
        };
        Self::new(reason, format!("{what} answered {status}"))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Why a request to Google failed, classified by what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// Network error, timeout, 429 or 5xx: try again later.
    #[error("transient failure: {0}")]
    Transient(Failure),
    /// The grant is gone (`invalid_grant`, `admin_policy_enforced`): the user must reconnect.
    #[error("grant revoked: {0}")]
    Revoked(Failure),
    /// Google refused for another reason (e.g. `invalid_client`): not the user's doing, so the
    /// tokens are kept and the user is never asked to reconnect, but retrying soon will not help.
    #[error("request rejected: {0}")]
    Rejected(Failure),
}

impl GoogleError {
    /// The failure, whatever the variant.
    pub fn failure(&self) -> &Failure {
        match self {
            Self::Transient(f) | Self::Revoked(f) | Self::Rejected(f) => f,
        }
    }

    /// The precise reason, whatever the variant.
    pub fn reason(&self) -> FailureReason {
        self.failure().reason
    }
}

/// Maps the oauth2 crate's error to what the caller should do. The crate's `Parse` variant
/// carries the raw body, which may hold a token, so no variant's payload is ever formatted.
pub(super) fn classify(error: RequestTokenError<HttpError, BasicErrorResponse>) -> GoogleError {
    use FailureReason as R;
    match error {
        RequestTokenError::ServerResponse(response) => classify_code(response.error()),
        RequestTokenError::Request(e) => {
            let reason = match &e {
                HttpError::Status(429) => R::RateLimited,
                HttpError::Status(_) => R::ServerError,
                HttpError::Timeout(_) => R::Timeout,
                HttpError::Network(_) => R::Network,
            };
            GoogleError::Transient(Failure::new(reason, e.to_string()))
        }
        RequestTokenError::Parse(_, _) => GoogleError::Transient(Failure::new(
            R::Other,
            "unparseable answer from the token endpoint",
        )),
        RequestTokenError::Other(_) => GoogleError::Transient(Failure::new(
            R::Other,
            "unexpected answer from the token endpoint",
        )),
    }
}

/// An OAuth error code from the token endpoint's body (docs/contract.md section 9).
fn classify_code(code: &BasicErrorResponseType) -> GoogleError {
    use FailureReason as R;
    let failure = |reason| Failure::new(reason, code.to_string());
    match code {
        BasicErrorResponseType::InvalidGrant => GoogleError::Revoked(failure(R::InvalidGrant)),
        BasicErrorResponseType::InvalidClient => GoogleError::Rejected(failure(R::InvalidClient)),
        BasicErrorResponseType::UnauthorizedClient => {
            GoogleError::Rejected(failure(R::UnauthorizedClient))
        }
        BasicErrorResponseType::Extension(ext) => match ext.as_str() {
            "admin_policy_enforced" => GoogleError::Revoked(failure(R::AdminPolicyEnforced)),
            "deleted_client" => GoogleError::Rejected(failure(R::DeletedClient)),
            // Google's words for its own trouble, sometimes sent with a 4xx status.
            "internal_failure" | "server_error" | "temporarily_unavailable" => {
                GoogleError::Transient(failure(R::ServerError))
            }
            _ => GoogleError::Rejected(failure(R::Other)),
        },
        _ => GoogleError::Rejected(failure(R::Other)),
    }
}

#[cfg(test)]
mod tests {
    use oauth2::{StandardErrorResponse, basic::BasicErrorResponseType as T};

    use super::*;

    fn server_says(code: T) -> GoogleError {
        classify(RequestTokenError::ServerResponse(
            StandardErrorResponse::new(
                code,
                Some("Token has been expired or revoked.".into()),
                None,
            ),
        ))
    }

    fn ext(code: &str) -> T {
        T::Extension(code.into())
    }

    #[test]
    fn the_users_grant_ends_only_on_invalid_grant_and_admin_policy() {
        for (code, reason) in [
            (T::InvalidGrant, FailureReason::InvalidGrant),
            (
                ext("admin_policy_enforced"),
                FailureReason::AdminPolicyEnforced,
            ),
        ] {
            let error = server_says(code);
            assert!(matches!(error, GoogleError::Revoked(_)), "{error:?}");
            assert_eq!(error.reason(), reason);
        }
    }

    #[test]
    fn client_refusals_are_rejected_not_revoked() {
        for (code, reason) in [
            (T::InvalidClient, FailureReason::InvalidClient),
            (T::UnauthorizedClient, FailureReason::UnauthorizedClient),
            (ext("deleted_client"), FailureReason::DeletedClient),
            (T::InvalidRequest, FailureReason::Other),
            (T::InvalidScope, FailureReason::Other),
            (ext("something_new"), FailureReason::Other),
        ] {
            let error = server_says(code);
            assert!(matches!(error, GoogleError::Rejected(_)), "{error:?}");
            assert_eq!(error.reason(), reason);
        }
    }

    #[test]
    fn google_trouble_and_no_answer_are_transient() {
        let cases = [
            (
                server_says(ext("internal_failure")),
                FailureReason::ServerError,
            ),
            (
                server_says(ext("temporarily_unavailable")),
                FailureReason::ServerError,
            ),
            (
                classify(RequestTokenError::Request(HttpError::Status(429))),
                FailureReason::RateLimited,
            ),
            (
                classify(RequestTokenError::Request(HttpError::Status(503))),
                FailureReason::ServerError,
            ),
            (
                classify(RequestTokenError::Request(HttpError::Timeout("t".into()))),
                FailureReason::Timeout,
            ),
            (
                classify(RequestTokenError::Request(HttpError::Network("n".into()))),
                FailureReason::Network,
            ),
            (
                classify(RequestTokenError::Other("empty".into())),
                FailureReason::Other,
            ),
        ];
        for (error, reason) in cases {
            assert!(matches!(error, GoogleError::Transient(_)), "{error:?}");
            assert_eq!(error.reason(), reason);
        }
    }

    #[test]
    fn messages_carry_the_code_never_the_description() {
        let error = server_says(T::InvalidGrant);
        assert_eq!(error.to_string(), "grant revoked: invalid_grant");
        assert!(!format!("{error:?}").contains("expired"));
    }

    #[test]
    fn labels_are_distinct_constants() {
        let labels: std::collections::HashSet<_> =
            FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), FailureReason::ALL.len());
        assert!(
            labels
                .iter()
                .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }
}
