//! Turns Nagle's algorithm off on this process's PostgreSQL connections. sqlx 0.9.0 stopped
//! setting `TCP_NODELAY` (sqlx issue #4335; the fix, #4336, is merged but not released), and
//! without it a statement longer than one TCP segment (a write batch of a few hundred rows
//! is about 100 KB) waits for the server's delayed ACK before its last segment leaves: 40 ms
//! on Linux. That bounds the one batched writer by the delayed ACK rather than by PostgreSQL,
//! whose own work on a batch is a small fraction of that wait.
//! sqlx gives no handle on its socket, so after each new connection this sets the option on
//! every TCP socket of the process whose peer is the database's port; all of those are
//! sqlx's, and the option is harmless on any socket. Linux only (it reads `/proc/self/fd`);
//! elsewhere it does nothing. Remove once sqlx sets the option again: the test
//! `nodelay::sqlx_alone_still_leaves_nagle_on` fails on that day.
//!
//! The descriptors are borrowed, never owned: nothing here closes one or keeps one past the
//! loop step that found it (see [`for_each_database_socket`]).

use std::str::FromStr;

use sea_orm::sqlx::{
    self, PgConnection,
    pool::PoolConnectionMetadata,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// `pool` with a hook that sets `TCP_NODELAY` on each connection it opens to `url`'s port.
pub(super) fn on_connect(pool: PgPoolOptions, url: &str) -> PgPoolOptions {
    let Ok(options) = PgConnectOptions::from_str(url) else {
        return pool;
    };
    let port = options.get_port();
    pool.after_connect(move |_: &mut PgConnection, _: PoolConnectionMetadata| {
        Box::pin(async move {
            set_on_database_sockets(port);
            Ok::<(), sqlx::Error>(())
        })
    })
}

/// Sets `TCP_NODELAY` on every TCP socket of this process connected to `port`.
fn set_on_database_sockets(port: u16) {
    for_each_database_socket(port, |socket| {
        let _ = socket.set_tcp_nodelay(true);
    });
}

/// How many TCP sockets of this process are connected to `port`, and whether all of them
/// have `TCP_NODELAY` set (what tests check of the pool's connections).
pub fn database_sockets_without_delay(port: u16) -> (usize, bool) {
    let (mut count, mut all) = (0, true);
    for_each_database_socket(port, |socket| {
        count += 1;
        all &= socket.tcp_nodelay().unwrap_or(false);
    });
    (count, all)
}

/// Calls `f` with each TCP socket of this process whose peer port is `port`. `f` gets a
/// `SockRef`, which never closes its descriptor on drop, and its higher-ranked lifetime keeps
/// `f` from holding on to it past the call.
fn for_each_database_socket(port: u16, mut f: impl FnMut(socket2::SockRef<'_>)) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let sockets = dir.flatten().filter(|entry| {
        std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
    });
    for fd in sockets.filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok()) {
        // SAFETY: the borrow lives for this loop step only, and neither it nor the `SockRef`
        // made from it closes the descriptor (sqlx owns it and closes it). If another thread
        // closed the descriptor since the directory was read, the calls below fail with
        // `EBADF`; if the number was reused meanwhile, they reach whatever now holds it: on a
        // non-socket they fail (`ENOTSOCK`), and a socket gets the option only if its peer is
        // the database's port, where it does no harm. Only getpeername, getsockopt and
        // setsockopt(TCP_NODELAY) are ever called: nothing reads, writes or closes.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let to_database = socket
            .peer_addr()
            .ok()
            .and_then(|peer| peer.as_socket())
            .is_some_and(|peer| peer.port() == port);
        if to_database {
            f(socket);
        }
    }
}
