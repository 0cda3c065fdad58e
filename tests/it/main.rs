//! The one integration test binary (every extra binary costs a link on a small machine).
//! Each module drives the real service over HTTP on loopback, against the sandbox Google
//! provider and the reference microservice, on a real SQLite file or PostgreSQL database.

mod admin;
mod app_events;
mod bad_input;
mod browser;
mod browser_binding;
mod browser_console;
mod browser_demo;
mod cli;
mod cluster;
mod connect;
mod console;
mod console_grant;
mod console_security;
mod container;
mod disconnect;
mod docs;
mod event_durability;
mod faults;
mod fuzz;
mod google_grants;
mod grant_events;
mod grant_life;
mod metrics_labels;
mod nodelay;
mod oauth_states;
mod partial_consent;
mod paused;
mod pg_outage;
mod pgbouncer;
mod process;
mod rate_limit;
mod reference_microservice;
mod refresh;
mod restart;
mod risc;
mod risc_cli;
mod rotation;
mod signed_pushes;
mod slow_clients;
mod sqlite_lock;
mod store_batch;
mod support;
mod sync_failures;
mod telemetry;
