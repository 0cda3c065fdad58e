//! Which users this process may act for, among several nodes on one PostgreSQL
//! (docs/contract.md section 8; design in `docs/cluster.md`): [`Ownership`], which shards this
//! process holds, with their epochs and how long each lease is valid by the process's own
//! monotonic clock. Everything that acts for a user (a refresh, a push, an event to the app)
//! asks it first ([`Ownership::act`]) and carries the lease (epoch and this process's token)
//! into its writes (the fence). On a single node (SQLite, or no cluster) it holds everything,
//! always. The lease loop that keeps it current, the notices and the forwarding between nodes
//! are `node`'s, above the actors and the sync that ask here.
//!
//! Must not touch: actors, the sync, the database (the lease loop brings the renewals' answers
//! here through [`Ownership::apply`]), HTTP.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    ids::{Epoch, Shard},
    store::cluster::Fence,
};

/// One held lease as this process sees it.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: Epoch,
    /// Last renewal sent + TTL - margin: after this the lease may have lapsed.
    valid_until: Instant,
    /// Being handed over: no new work starts, work in flight may still commit.
    draining: bool,
}

/// Why a user's work may not run here now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotActing {
    /// Another node owns (or will own) the user's shard.
    NotHeld,
    /// Held, but the lease is not known valid now (a pause, an outage, a hand-over): wait.
    Uncertain,
}

/// Which shards this process acts for.
#[derive(Debug)]
pub struct Ownership {
    node_id: String,
    /// This process's token, the owner a lease names: with the epoch, the fence of its writes.
    process_token: Arc<str>,
    /// `None` on a single node: every user, no fence.
    shards: Option<RwLock<Vec<Option<Held>>>>,
    shard_count: u32,
    /// Work in flight per shard, so a shard is released only once its refreshes have ended.
    in_flight: Vec<AtomicU32>,
}

/// Work for one user that may run here; the lease (epoch and process token) goes into its
/// writes. Dropping it ends the work's count in its shard.
pub struct Acting<'a> {
    ownership: &'a Ownership,
    shard: Option<usize>,
    epoch: Option<Epoch>,
}

impl Acting<'_> {
    /// The fence of this work's writes: the lease's epoch and this process's token, checked
    /// together by every write of the refresh path; `None` on a single node.
    pub fn fence(&self) -> Option<Fence> {
        Some(Fence {
            epoch: self.epoch?,
            owner_token: self.ownership.process_token.clone(),
        })
    }

    /// The user's shard; `None` on a single node.
    pub fn shard(&self) -> Option<Shard> {
        self.shard.map(Shard::from_index)
    }

    /// Whether the lease is still valid by this process's clock, for an answer that came back
    /// and is about to be written: one that comes back after the lease is gone is dropped.
    pub fn still_valid(&self) -> bool {
        let Some(shard) = self.shard else {
            return true;
        };
        self.ownership
            .held(shard)
            .is_some_and(|held| Some(held.epoch) == self.epoch && held.valid_until > Instant::now())
    }
}

impl Drop for Acting<'_> {
    fn drop(&mut self) {
        if let Some(shard) = self.shard {
            self.ownership.in_flight[shard].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Ownership {
    /// A single node: holds every user, fences nothing.
    pub fn single(node_id: String) -> Self {
        Self {
            node_id,
            process_token: Arc::from(""),
            shards: None,
            shard_count: 1,
            in_flight: Vec::new(),
        }
    }

    /// A cluster node holding nothing yet; `process_token` is the one its leases name.
    pub fn cluster(node_id: String, process_token: &str, shard_count: u32) -> Self {
        let n = shard_count.max(1) as usize;
        Self {
            node_id,
            process_token: Arc::from(process_token),
            shards: Some(RwLock::new(vec![None; n])),
            shard_count: shard_count.max(1),
            in_flight: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// How many shards the users are spread over.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn is_cluster(&self) -> bool {
        self.shards.is_some()
    }

    /// The shard of `user_id`.
    pub fn shard_of(&self, user_id: &str) -> Shard {
        Shard::new(migration::shard_of(user_id, self.shard_count) as i32)
    }

    fn held(&self, shard: usize) -> Option<Held> {
        let shards = self.shards.as_ref()?;
        let shards = shards.read().unwrap_or_else(|e| e.into_inner());
        shards.get(shard).copied().flatten()
    }

    /// Whether this process holds the user's shard (valid now or not): its actor belongs here.
    pub fn holds(&self, user_id: &str) -> bool {
        match &self.shards {
            None => true,
            Some(_) => self.held(self.shard_of(user_id).index()).is_some(),
        }
    }

    /// Starts work for `user_id` if its lease is held, valid by this process's clock, and not
    /// being handed over.
    pub fn act(&self, user_id: &str) -> Result<Acting<'_>, NotActing> {
        if self.shards.is_none() {
            return Ok(Acting {
                ownership: self,
                shard: None,
                epoch: None,
            });
        }
        let shard = self.shard_of(user_id).index();
        let held = self.held(shard).ok_or(NotActing::NotHeld)?;
        if held.draining || held.valid_until <= Instant::now() {
            return Err(NotActing::Uncertain);
        }
        self.in_flight[shard].fetch_add(1, Ordering::AcqRel);
        Ok(Acting {
            ownership: self,
            shard: Some(shard),
            epoch: Some(held.epoch),
        })
    }

    /// Whether `shard` is held and not being handed over.
    pub fn act_shard_open(&self, shard: Shard) -> bool {
        self.held(shard.index()).is_some_and(|h| !h.draining)
    }

    /// Every held shard, ascending.
    pub fn held_shards(&self) -> Vec<Shard> {
        let Some(shards) = &self.shards else {
            return Vec::new();
        };
        let shards = shards.read().unwrap_or_else(|e| e.into_inner());
        (0..shards.len())
            .filter(|&i| shards[i].is_some())
            .map(Shard::from_index)
            .collect()
    }

    /// Held shards being handed over whose work has ended: ready to release.
    pub fn drained(&self) -> Vec<Shard> {
        let Some(shards) = &self.shards else {
            return Vec::new();
        };
        let shards = shards.read().unwrap_or_else(|e| e.into_inner());
        (0..shards.len())
            .filter(|&i| {
                shards[i].is_some_and(|h| h.draining)
                    && self.in_flight[i].load(Ordering::Acquire) == 0
            })
            .map(Shard::from_index)
            .collect()
    }

    /// Records a renewal's answer: `held` is every shard held now, valid until `valid_until`.
    /// Answers the shards gained and lost since the last one.
    pub fn apply(&self, held: &[(Shard, Epoch)], valid_until: Instant) -> (Vec<Shard>, Vec<Shard>) {
        let Some(shards) = &self.shards else {
            return (Vec::new(), Vec::new());
        };
        let mut shards = shards.write().unwrap_or_else(|e| e.into_inner());
        let mut now_held = vec![None; shards.len()];
        for &(shard, epoch) in held {
            if let Some(slot) = now_held.get_mut(shard.index()) {
                *slot = Some(epoch);
            }
        }
        let (mut gained, mut lost) = (Vec::new(), Vec::new());
        for (i, slot) in shards.iter_mut().enumerate() {
            match (&slot, now_held[i]) {
                (None, Some(epoch)) => {
                    gained.push(Shard::from_index(i));
                    *slot = Some(Held {
                        epoch,
                        valid_until,
                        draining: false,
                    });
                }
                (Some(old), Some(epoch)) => {
                    // A new epoch means the shard was lost and claimed back in between: its
                    // users must come up again from the database.
                    if old.epoch != epoch {
                        lost.push(Shard::from_index(i));
                        gained.push(Shard::from_index(i));
                    }
                    *slot = Some(Held {
                        epoch,
                        valid_until,
                        draining: old.draining && old.epoch == epoch,
                    });
                }
                (Some(_), None) => {
                    lost.push(Shard::from_index(i));
                    *slot = None;
                }
                (None, None) => {}
            }
        }
        (gained, lost)
    }

    /// Marks `shards` as being handed over: no new work starts for them.
    pub fn drain(&self, drain: &[Shard]) {
        let Some(shards) = &self.shards else { return };
        let mut shards = shards.write().unwrap_or_else(|e| e.into_inner());
        for &shard in drain {
            if let Some(Some(held)) = shards.get_mut(shard.index()) {
                held.draining = true;
            }
        }
    }

    /// Forgets every lease (they were released); answers the shards that were held.
    pub fn clear(&self) -> Vec<Shard> {
        let held = self.held_shards();
        if let Some(shards) = &self.shards {
            let mut shards = shards.write().unwrap_or_else(|e| e.into_inner());
            shards.iter_mut().for_each(|slot| *slot = None);
        }
        held
    }
}

/// How long before its database expiry a lease stops counting as valid here: room for the
/// renewal's own delay and for clocks that run at slightly different rates.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(200))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(shard: i32) -> Shard {
        Shard::new(shard)
    }

    fn held(shard: i32, epoch: i64) -> [(Shard, Epoch); 1] {
        [(Shard::new(shard), Epoch::new(epoch))]
    }

    #[tokio::test(start_paused = true)]
    async fn work_runs_only_inside_a_valid_lease() {
        let o = Ownership::cluster("n1".into(), "t1", 4);
        let user = (0..100)
            .map(|i| format!("u{i}"))
            .find(|u| o.shard_of(u) == s(2))
            .unwrap();
        assert_eq!(o.act(&user).err(), Some(NotActing::NotHeld));
        let until = Instant::now() + Duration::from_secs(3);
        let (gained, lost) = o.apply(&held(2, 7), until);
        assert_eq!((gained, lost), (vec![s(2)], vec![]));
        let acting = o.act(&user).unwrap();
        let fence = acting.fence().unwrap();
        assert_eq!((fence.epoch, &*fence.owner_token), (Epoch::new(7), "t1"));
        assert!(acting.still_valid());
        // Paused past the lease: nothing new starts, and the answer in flight is dropped.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!acting.still_valid());
        assert_eq!(o.act(&user).err(), Some(NotActing::Uncertain));
        // Draining waits for the work in flight.
        o.apply(&held(2, 7), Instant::now() + Duration::from_secs(3));
        o.drain(&[s(2)]);
        assert_eq!(o.act(&user).err(), Some(NotActing::Uncertain));
        assert!(o.drained().is_empty(), "work in flight holds the shard");
        drop(acting);
        assert_eq!(o.drained(), vec![s(2)]);
        // Claimed back at a new epoch: lost and gained again, so its users reload.
        let (gained, lost) = o.apply(&held(2, 9), Instant::now() + Duration::from_secs(3));
        assert_eq!((gained, lost), (vec![s(2)], vec![s(2)]));
        assert_eq!(o.clear(), vec![s(2)]);
        assert!(!o.holds(&user));
    }

    #[test]
    fn a_single_node_holds_everyone_without_a_fence() {
        let o = Ownership::single("solo".into());
        assert!(o.holds("anyone"));
        assert_eq!(o.act("anyone").unwrap().fence(), None);
    }
}
