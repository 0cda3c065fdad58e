//! The microservice's misbehaviour on purpose: fault modes and latency, set from Rust through
//! the handle or over HTTP through `POST /sandbox/control`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::{ApiError, Inner, lock};
use crate::{MAX_HANG, wait_while};

/// How the microservice misbehaves on `/api` calls.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum FaultMode {
    /// Answers normally.
    #[default]
    Healthy,
    /// Answers every call 500 without touching the store.
    Error500,
    /// Holds every call (at most 120 s, or until the mode changes or the server stops), then
    /// answers 500 without touching the store.
    Hang,
    /// Answers 500 to every other call, starting with the first after the mode is set.
    FlakyEveryOther,
    /// Answers 500 with this probability (0.0 to 1.0).
    ErrorRate(f64),
    /// Holds every call that arrives while set until the held calls are released
    /// ([`crate::ReferenceMicroservice::release_stalled`], or `{"release": true}` over HTTP),
    /// the server stops or 120 s pass, then handles it normally, version check included: a
    /// push its sender gave up on lands late, as after a slow network. Changing the mode does
    /// not release them, so newer pushes can get through (mode `Healthy`) while an older one
    /// is still held, and be overtaken by it.
    StallThenApply,
}

/// The current fault settings, copied out of the mutex before any await.
#[derive(Clone, Copy)]
pub(super) struct Faults {
    pub(super) mode: FaultMode,
    pub(super) latency: Duration,
}

/// Counts a call as held while it stalls, even if the client gives up and the call is dropped.
struct Held<'a>(&'a Inner);

impl<'a> Held<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.stalled.fetch_add(1, Ordering::SeqCst);
        Self(inner)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.stalled.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    pub(super) fn set_mode(&self, mode: FaultMode) {
        lock(&self.faults).mode = mode;
        self.flaky_calls.store(0, Ordering::SeqCst);
        self.changes.send_replace(());
    }

    pub(super) fn faults(&self) -> Faults {
        *lock(&self.faults)
    }

    /// Lets every call held by `StallThenApply` go on; later calls are held again.
    pub(super) fn release_stalled(&self) {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.changes.send_replace(());
    }

    /// Applies latency and the fault mode; returns the failure to answer, if any.
    pub(super) async fn injected_fault(&self) -> Option<ApiError> {
        let Faults { mode, latency } = self.faults();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let fail = match mode {
            FaultMode::Healthy => false,
            FaultMode::Error500 => true,
            FaultMode::Hang => {
                self.hang().await;
                true
            }
            FaultMode::FlakyEveryOther => self
                .flaky_calls
                .fetch_add(1, Ordering::SeqCst)
                .is_multiple_of(2),
            FaultMode::ErrorRate(rate) => rand::random::<f64>() < rate,
            FaultMode::StallThenApply => {
                self.stall().await;
                false
            }
        };
        fail.then(|| ApiError::internal(format!("Injected fault: {}", mode_name(mode))))
    }

    /// Holds a request while the mode stays `Hang`, at most [`MAX_HANG`].
    async fn hang(&self) {
        let deadline = tokio::time::Instant::now() + MAX_HANG;
        wait_while(&self.changes, deadline, || {
            !self.stopping.load(Ordering::SeqCst) && self.faults().mode == FaultMode::Hang
        })
        .await;
    }

    /// Holds a request until the next release or stop, at most [`MAX_HANG`]; the mode may
    /// change meanwhile (see [`FaultMode::StallThenApply`]).
    async fn stall(&self) {
        let released_at = self.releases.load(Ordering::SeqCst);
        let _held = Held::new(self);
        let deadline = tokio::time::Instant::now() + MAX_HANG;
        wait_while(&self.changes, deadline, || {
            !self.stopping.load(Ordering::SeqCst)
                && self.releases.load(Ordering::SeqCst) == released_at
        })
        .await;
    }

    pub(super) fn controls(&self) -> ControlsView {
        let Faults { mode, latency } = self.faults();
        ControlsView {
            mode: mode_name(mode),
            error_rate: match mode {
                FaultMode::ErrorRate(rate) => rate,
                _ => 0.0,
            },
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            stalled: self.stalled.load(Ordering::SeqCst),
        }
    }
}

/// The fault controls as `POST /sandbox/control` takes them; every field optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlUpdate {
    mode: Option<ModeName>,
    error_rate: Option<f64>,
    latency_ms: Option<u64>,
    /// `true` lets the calls held by `stall_then_apply` go on (the mode stays).
    release: Option<bool>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ModeName {
    Healthy,
    Error500,
    Hang,
    FlakyEveryOther,
    ErrorRate,
    StallThenApply,
}

/// The fault controls as `POST /sandbox/control` answers them.
#[derive(Serialize)]
pub(super) struct ControlsView {
    mode: &'static str,
    error_rate: f64,
    latency_ms: u64,
    /// Calls held by `stall_then_apply` right now.
    stalled: usize,
}

pub(super) async fn control(
    State(inner): State<Arc<Inner>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let update: ControlUpdate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Invalid control: {e}")))?;
    if update.error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return Err(ApiError::bad_request(
            "error_rate must be between 0.0 and 1.0",
        ));
    }
    let mode = match (update.mode, update.error_rate) {
        (None, _) => None,
        (Some(ModeName::ErrorRate), None) => {
            return Err(ApiError::bad_request("mode error_rate needs an error_rate"));
        }
        (Some(ModeName::ErrorRate), Some(rate)) => Some(FaultMode::ErrorRate(rate)),
        (Some(ModeName::Healthy), _) => Some(FaultMode::Healthy),
        (Some(ModeName::Error500), _) => Some(FaultMode::Error500),
        (Some(ModeName::Hang), _) => Some(FaultMode::Hang),
        (Some(ModeName::FlakyEveryOther), _) => Some(FaultMode::FlakyEveryOther),
        (Some(ModeName::StallThenApply), _) => Some(FaultMode::StallThenApply),
    };
    if let Some(latency_ms) = update.latency_ms {
        lock(&inner.faults).latency = Duration::from_millis(latency_ms);
    }
    if let Some(mode) = mode {
        inner.set_mode(mode);
    }
    if update.release == Some(true) {
        inner.release_stalled();
    }
    inner.changes.send_replace(());
    Ok(Json(inner.controls()).into_response())
}

fn mode_name(mode: FaultMode) -> &'static str {
    match mode {
        FaultMode::Healthy => "healthy",
        FaultMode::Error500 => "error500",
        FaultMode::Hang => "hang",
        FaultMode::FlakyEveryOther => "flaky_every_other",
        FaultMode::ErrorRate(_) => "error_rate",
        FaultMode::StallThenApply => "stall_then_apply",
    }
}
