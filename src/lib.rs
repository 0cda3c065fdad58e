//! tokenwarden keeps users' Google Calendar OAuth tokens alive and mirrored to an external
//! microservice.
//!
//! # Layout
//! A ladder of layers, from the top down: a module imports only from layers below its own,
//! so nothing loops (`tests/it/layers.rs` reads this list and checks every `crate::` path in
//! `src/` against it).
//!
//! 1. [`cli`]: the command line and the commands other than `serve`. [`risc_cli`]:
//!    `tokenwarden risc`, registering the receiver of Google's security events.
//! 2. [`app`]: wires everything together; `spawn`ed by `main` and by the tests alike.
//! 3. [`http`]: the axum front door (user API, admin API, operator console, health, metrics).
//! 4. [`node`]: this process as a member of its cluster: who runs a user (here, elsewhere,
//!    nobody), the lease loop, the notices between nodes, forwarded admin calls, joining.
//! 5. [`actors`]: the root supervisor and one actor per connected user that owns refreshing.
//!    [`events`]: delivers the events about users' connections to the app, from the store's
//!    outbox, in order per user, with durable retries.
//! 6. [`sync`]: pushes every token change to the microservice, in order, with durable retries.
//! 7. [`cluster`]: which shards this process holds, the question asked before acting for a
//!    user. [`metrics`]: the Prometheus registry. [`risc`]: the receiver of Google's security
//!    events (Cross-Account Protection).
//! 8. [`google`]: the OAuth client that talks to Google (or the sandbox standing in for it).
//!    [`store`]: sea-orm entities and queries (SQLite or PostgreSQL).
//! 9. [`config`]: every setting, parsed once at start.
//! 10. Leaves, importing nothing of the crate but the clock and the ids: [`telemetry`]:
//!     logging (pretty or JSON) and the OTLP export of traces. [`signing`]: the Standard
//!     Webhooks signatures of pushes and events. [`crypto`]: AES-256-GCM for tokens at rest, constant-time secret comparison.
//!     [`token_ids`]: the identifiers of a refresh token that Google's security events use.
//!     [`history`]: each user's recent refreshes and pushes, and per-minute counts, in memory
//!     for the operator console. [`log_limit`]: at most one warning per period for what
//!     outsiders or outages repeat. [`retry`]: the one backoff policy of every loop that waits
//!     after a failure.
//! 11. [`clock`]: the service's wall clock, which every schedule reads and tests can pause.
//!     [`ids`]: the domain's nouns as types (user id, shard, epoch, token version).
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
pub mod ids;
pub mod log_limit;
pub mod metrics;
pub mod node;
pub mod retry;
pub mod risc;
pub mod risc_cli;
pub mod signing;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod token_ids;
