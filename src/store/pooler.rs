//! Whether `DATABASE_URL` keeps prepared statements, checked once at start. sqlx prepares
//! every statement that has parameters as a named, cached statement (`sqlx_s_1`, ...) and
//! prepares it in one round trip (`Parse`, `Sync`) before running it in the next (`Bind`,
//! `Execute`, `Sync`). A pooler that hands a server connection to another client after each
//! transaction or `Sync` (PgBouncer in transaction mode before 1.21, or later versions with
//! `max_prepared_statements = 0`) breaks both: a statement prepared on one server connection
//! is run on another where it does not exist, or a second client prepares the same name on a
//! server that already has it. sea-orm gives no way to turn that off per statement, so rather
//! than fail now and then under load, the service says so in one line at start and stops.
//! Must not touch: anything but the two connections it borrows.

use sea_orm::{
    DatabaseConnection,
    sqlx::{self, Connection},
};

/// SQLSTATE of "prepared statement already exists" and "prepared statement does not exist".
const PREPARED_STATEMENT_CODES: [&str; 2] = ["42P05", "26000"];

/// Rounds of the probe: each client prepares and runs one statement per round. Two rounds
/// already mix the two clients' statements on one server under PgBouncer's default (the most
/// recently used server connection first); four leave room for other server choices.
const ROUNDS: usize = 4;

/// `Err` with what the operator should know when the pooled connections lose prepared
/// statements between transactions; `Ok` when they keep them (a direct connection, session
/// pooling, PgBouncer 1.21+ with `max_prepared_statements`). Errors other than those two
/// SQLSTATEs are not the probe's business and count as `Ok` (the migration reports them).
pub(super) async fn check_prepared_statements(db: &DatabaseConnection) -> Result<(), String> {
    let pool = db.get_postgres_connection_pool();
    // Two clients of the pooler at once, as the service's pool has under any load.
    let (Ok(mut first), Ok(mut second)) = (pool.acquire().await, pool.acquire().await) else {
        return Ok(());
    };
    let mut found = None;
    'rounds: for round in 0..ROUNDS {
        for conn in [&mut first, &mut second] {
            let probe = sqlx::query("SELECT $1::int4 AS probe")
                .bind(round as i32)
                .execute(&mut **conn)
                .await;
            if let Err(e) = probe
                && let Some(db) = e.as_database_error()
                && db
                    .code()
                    .is_some_and(|c| PREPARED_STATEMENT_CODES.contains(&c.as_ref()))
            {
                found = Some(db.message().to_string());
                break 'rounds;
            }
        }
    }
    // The probe's statements stay behind on whatever server connections they reached:
    // these two client connections are closed, not returned to the pool.
    for conn in [first, second] {
        let _ = conn.detach().close().await;
    }
    match found {
        None => Ok(()),
        Some(error) => Err(format!(
            "DATABASE_URL goes through a connection pooler that does not keep prepared \
             statements between transactions (PostgreSQL said: {error}): use PgBouncer 1.21 or later with \
             max_prepared_statements > 0, session pooling, or a direct URL"
        )),
    }
}
