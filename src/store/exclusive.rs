//! SQLite is single-node (docs/contract.md section 8): the process that serves a SQLite file holds
//! an OS lock (`flock`) on it for as long as it lives, so a second `serve` on the same file
//! refuses to start, and the lock dies with its holder (a restart right after SIGKILL starts
//! normally). Within one process the hold is shared, so a test that restarts the service in
//! place is not refused by its own previous instance. Tools (`migrate`, `rotate-key`) do not
//! take it. Must not touch: SQLite's own locking, which is separate (`fcntl`) and unaffected.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions, TryLockError},
    path::PathBuf,
    sync::{Arc, Mutex, Weak},
};

use super::StoreError;

/// Held while the process serves the file; dropping the last one releases the lock.
#[derive(Debug, Clone)]
pub struct SqliteHold(#[allow(dead_code)] Arc<File>);

/// Holds in this process, by file.
static HOLDS: Mutex<Option<HashMap<PathBuf, Weak<File>>>> = Mutex::new(None);

/// Takes the lock of the SQLite file `url` names; `None` for PostgreSQL or an in-memory
/// database. Fails with [`StoreError::Held`] when another process serves the file.
pub fn hold_sqlite_file(url: &str) -> Result<Option<SqliteHold>, StoreError> {
    let Some(path) = sqlite_path(url) else {
        return Ok(None);
    };
    let mut holds = HOLDS.lock().unwrap_or_else(|e| e.into_inner());
    let holds = holds.get_or_insert_with(HashMap::new);
    let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    if let Some(file) = holds.get(&key).and_then(Weak::upgrade) {
        return Ok(Some(SqliteHold(file)));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::Held(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(StoreError::Held(path.display().to_string()));
        }
        Err(TryLockError::Error(e)) => {
            return Err(StoreError::Held(format!("{}: {e}", path.display())));
        }
    }
    let key = std::fs::canonicalize(&path).unwrap_or(key);
    let file = Arc::new(file);
    holds.insert(key, Arc::downgrade(&file));
    Ok(Some(SqliteHold(file)))
}

/// The file a `sqlite:` URL names, if it names one.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = path.strip_prefix("//").unwrap_or(path);
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite://tokenwarden.db?mode=rwc"),
            Some(PathBuf::from("tokenwarden.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/x.db"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_path("postgres://localhost/x"), None);
    }
}
