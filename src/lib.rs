//! tokenwarden keeps users' Google Calendar OAuth tokens alive and mirrored to an external
//! microservice.
//!
//! # Layout
//! - [`config`]: every setting, parsed once at start.
//! - [`crypto`]: AES-256-GCM for tokens at rest, constant-time secret comparison.
//! - [`token_ids`]: the identifiers of a refresh token that Google's security events use.
//! - [`risc`]: the receiver of Google's security events (Cross-Account Protection).
//! - [`store`]: sea-orm entities and queries (SQLite or PostgreSQL).
//! - [`google`]: the OAuth client that talks to Google (or the sandbox standing in for it).
//! - [`sync`]: pushes every token change to the microservice, in order, with durable retries.
//! - [`events`]: delivers the events about users' connections to the app, from the store's
//!   outbox, in order per user, with durable retries.
//! - [`actors`]: the root supervisor and one actor per connected user that owns refreshing.
//! - [`http`]: the axum front door (user API, admin API, operator console, health, metrics).
//! - [`metrics`]: the Prometheus registry.
//! - [`history`]: each user's recent refreshes and pushes, and per-minute counts, in memory
//!   for the operator console.
//! - [`log_limit`]: at most one warning per period for what outsiders or outages repeat.
//! - [`retry`]: the one backoff policy of every loop that waits after a failure.
//! - [`app`]: wires everything together; `spawn`ed by `main` and by the tests alike.
//! - [`telemetry`]: logging (pretty or JSON) and the OTLP export of traces.
//! - [`risc_cli`]: `tokenwarden risc`, registering the receiver of Google's security events.
//!
//! # Tools (crates of their own under `tools/`; nothing here imports them)
//! - `tokenwarden-sandbox`: real HTTP stand-ins for Google and the microservice.
//! - `tokenwarden-demo`: the stand-ins and a page around the service, for a person to try.
//! - `tokenwarden-loadtest`: drives a `serve` process with many users and reports figures.

pub mod actors;
pub mod app;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod events;
pub mod google;
pub mod history;
pub mod http;
pub mod log_limit;
pub mod metrics;
pub mod retry;
pub mod risc;
pub mod risc_cli;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod token_ids;
