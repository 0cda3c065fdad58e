//! The HTTP client the oauth2 crate uses, on reqwest. It turns 429 and 5xx answers into
//! errors before oauth2 parses them, so that they are classified as transient rather than as
//! unparseable token responses. Redirects are never followed (an OAuth endpoint that
//! redirects is misconfigured or hostile).

use std::{future::Future, pin::Pin, time::Duration};

use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

/// Why an HTTP exchange with Google failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Network(String),
    /// No answer in time (told apart from other network failures for the metrics).
    #[error("{0}")]
    Timeout(String),
    #[error("answered HTTP {0}")]
    Status(u16),
}

impl HttpError {
    fn from_reqwest(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout(describe(error))
        } else {
            Self::Network(describe(error))
        }
    }
}

/// reqwest client shared by every call to Google.
#[derive(Clone)]
pub struct OAuthHttp {
    client: reqwest::Client,
}

impl OAuthHttp {
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()?;
        Ok(Self { client })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    async fn send(&self, mut request: HttpRequest) -> Result<HttpResponse, HttpError> {
        crate::telemetry::inject_context(request.headers_mut());
        let request =
            reqwest::Request::try_from(request).map_err(|e| HttpError::from_reqwest(&e))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| HttpError::from_reqwest(&e))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(HttpError::Status(status.as_u16()));
        }
        let mut builder = http::Response::builder().status(status);
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| HttpError::from_reqwest(&e))?;
        builder
            .body(body.to_vec())
            .map_err(|e| HttpError::Network(e.to_string()))
    }
}

impl<'c> AsyncHttpClient<'c> for OAuthHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// A `traceparent` for the current span, for requests built by hand.
pub fn trace_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    crate::telemetry::inject_context(&mut headers);
    headers
}

/// A reqwest error without its URL (URLs of token endpoints never carry tokens, but keeping
/// messages short and uniform helps the logs), with the cause that says what happened.
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}
