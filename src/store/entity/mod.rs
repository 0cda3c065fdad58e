//! sea-orm entities, one per table of the `migration` crate.

pub mod app_event;
pub mod console_session;
pub mod oauth_state;
pub mod risc_event;
pub mod sync_ack;
pub mod user;
