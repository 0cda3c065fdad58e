//! The domain's nouns as types, so that a user's id, a shard, a lease's epoch and a token's
//! version cannot be passed for one another: [`UserId`], [`Shard`], [`Epoch`] and
//! [`TokenVersion`]. Each is the value it wraps on the wire (serde, transparent) and in the
//! database (sea-orm's value type, so entity columns hold them directly). They hold no
//! secrets: a user id and the numbers may be logged.
//!
//! Must not import anything of the service: every layer names these.

use std::{borrow::Borrow, fmt, ops::Deref, sync::Arc};

use sea_orm::{
    ColIdx, DbErr, DeriveValueType, QueryResult, TryFromU64, TryGetError, TryGetable, Value,
    sea_query::{ArrayType, ColumnType, Nullable, ValueType, ValueTypeErr},
};
use serde::{Deserialize, Serialize};

/// The main app's id of a user (`users.user_id`): any non-empty string of up to 255 bytes,
/// checked where it enters (the front door). Reads as a `&str` wherever one is asked for.
/// Shared, not copied, when cloned: one connected user's id is held by its registry slot, its
/// wake schedule and the messages about it, a million times over at a million users.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for UserId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for UserId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for UserId {
    fn from(id: String) -> Self {
        Self(Arc::from(id))
    }
}

impl From<&str> for UserId {
    fn from(id: &str) -> Self {
        Self(Arc::from(id))
    }
}

impl PartialEq<String> for UserId {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<&str> for UserId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// A `users.user_id` column holds a `UserId` directly: the database sees the string. (sea-orm's
// `DeriveValueType` wants an inner type the database knows, which a shared `Arc<str>` is not,
// so these say the same by hand, each deferring to `String`.)

impl From<UserId> for Value {
    fn from(id: UserId) -> Self {
        Value::from(id.as_str())
    }
}

impl TryGetable for UserId {
    fn try_get_by<I: ColIdx>(res: &QueryResult, index: I) -> Result<Self, TryGetError> {
        String::try_get_by(res, index).map(Self::from)
    }
}

impl ValueType for UserId {
    fn try_from(v: Value) -> Result<Self, ValueTypeErr> {
        <String as ValueType>::try_from(v).map(Self::from)
    }

    fn type_name() -> String {
        "UserId".to_owned()
    }

    fn array_type() -> ArrayType {
        <String as ValueType>::array_type()
    }

    fn column_type() -> ColumnType {
        <String as ValueType>::column_type()
    }
}

impl Nullable for UserId {
    fn null() -> Value {
        <String as Nullable>::null()
    }
}

/// `users.user_id` is the primary key; sea-orm asks a key type for a conversion from an
/// auto-increment id, which a chosen string never is.
impl TryFromU64 for UserId {
    fn try_from_u64(_: u64) -> Result<Self, DbErr> {
        Err(DbErr::ConvertFromU64("UserId"))
    }
}

/// A number of the domain: a type of its own around the integer, built with `new`, read with
/// `get`, shown as the number.
macro_rules! number {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug,
            Clone,
            Copy,
            Default,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Serialize,
            Deserialize,
            DeriveValueType,
        )]
        #[serde(transparent)]
        pub struct $name($inner);

        impl $name {
            pub const fn new(value: $inner) -> Self {
                Self(value)
            }

            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

number! {
    /// Which slice of the users a lease covers (`migration::shard_of`; 0 up to the shard
    /// count fixed at the first migration).
    Shard(i32)
}

impl Shard {
    /// The shard as an index into per-shard tables (shards are never negative).
    pub fn index(self) -> usize {
        <usize as TryFrom<i32>>::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// The shard at `index` of a per-shard table.
    pub fn from_index(index: usize) -> Self {
        Self(<i32 as TryFrom<usize>>::try_from(index).unwrap_or(i32::MAX))
    }
}

number! {
    /// How many times a shard's lease has been claimed: every claim bumps it, and a write of
    /// the refresh path names the epoch it acts under (the fence).
    Epoch(i64)
}

number! {
    /// A user's `token_version`: bumped by every token change, so a push names the state it
    /// carries, an acknowledgement the state it acknowledges, and a write the state it read.
    TokenVersion(i64)
}

impl TokenVersion {
    /// Before the first token change: nothing was ever pushed or acknowledged.
    pub const NONE: Self = Self(0);

    /// The version the next token change writes.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}
