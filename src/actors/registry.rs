//! The supervisor's registry: one slot per user (live, parked or restarting), the index from a
//! live actor's id to its user, the [`WakeSchedule`] of the parked ones, the views the admin API
//! reads, and the actor gauges. Every slot change goes through [`Registry::put`] and
//! [`Registry::take`], which keep the index, the wake schedule and the gauges in step with the
//! slots. Plain data: it never spawns, stops or messages an actor, and reads no clock.
//! Must not touch: actors' state (it holds their handles only), the store.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use ractor::{ActorId, ActorRef};

use super::{
    messages::{ActorEntry, ActorPage, ActorView, Parked, UserTokenMsg},
    restart::RestartPolicy,
    schedule::WakeSchedule,
};
use crate::{ids::UserId, metrics::Metrics};

/// One user, as the supervisor holds it.
pub enum Slot {
    Live(ActorRef<UserTokenMsg>),
    Parked(Parked),
    /// Crashed, waiting out its restart backoff.
    Restarting,
}

/// Every user this process runs, by user id (ordered, for the admin API's pages).
pub struct Registry {
    slots: BTreeMap<UserId, Slot>,
    users_by_actor: HashMap<ActorId, UserId>,
    /// Invariant: each entry belongs to a parked slot. A parked slot has an entry unless it has
    /// no plan, or a wake tick took it and its actor could not start.
    wakes: WakeSchedule,
    parked: usize,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// An empty registry waking parked users by `wakes`.
    pub fn new(wakes: WakeSchedule, metrics: Arc<Metrics>) -> Self {
        Self {
            slots: BTreeMap::new(),
            users_by_actor: HashMap::new(),
            wakes,
            parked: 0,
            metrics,
        }
    }

    /// Users held, in any slot.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Users parked.
    pub fn parked(&self) -> usize {
        self.parked
    }

    pub fn get(&self, user_id: &str) -> Option<&Slot> {
        self.slots.get(user_id)
    }

    /// The user of a live actor.
    pub fn user_of(&self, actor: &ActorId) -> Option<UserId> {
        self.users_by_actor.get(actor).cloned()
    }

    /// Every user whose id passes `keep`.
    pub fn users_matching(&self, keep: impl Fn(&str) -> bool) -> Vec<UserId> {
        self.slots.keys().filter(|u| keep(u)).cloned().collect()
    }

    /// The key for `user_id`, shared with its slot if it has one.
    pub fn key(&self, user_id: &str) -> UserId {
        self.slots
            .get_key_value(user_id)
            .map_or_else(|| UserId::from(user_id), |(key, _)| key.clone())
    }

    /// Puts the user in `slot`, answering the slot it replaces.
    pub fn put(&mut self, user_id: UserId, slot: Slot) -> Option<Slot> {
        let old = self.remove(&user_id);
        match &slot {
            Slot::Live(actor) => {
                self.users_by_actor.insert(actor.get_id(), user_id.clone());
            }
            Slot::Parked(parked) => {
                self.wakes.insert(&user_id, parked.wake_plan());
                self.metrics.actor_status(parked.status().as_str(), 1);
                self.parked += 1;
            }
            Slot::Restarting => {}
        }
        self.slots.insert(user_id, slot);
        self.sync_gauge();
        old
    }

    /// Drops the user, answering its slot.
    pub fn take(&mut self, user_id: &str) -> Option<Slot> {
        let slot = self.remove(user_id);
        self.sync_gauge();
        slot
    }

    fn remove(&mut self, user_id: &str) -> Option<Slot> {
        let (user_id, slot) = self.slots.remove_entry(user_id)?;
        match &slot {
            Slot::Live(actor) => {
                self.users_by_actor.remove(&actor.get_id());
            }
            Slot::Parked(parked) => {
                self.wakes.remove(&user_id, parked.wake_plan());
                self.metrics.actor_status(parked.status().as_str(), -1);
                self.parked -= 1;
            }
            Slot::Restarting => {}
        }
        Some(slot)
    }

    /// A wake tick (see [`WakeSchedule::take_due`]): the parked users to start now, most
    /// overdue first, and whether a backlog remains. They stay parked until their actor runs.
    pub fn take_due(
        &mut self,
        now: DateTime<Utc>,
        refreshing: usize,
    ) -> (Vec<(UserId, Parked)>, bool) {
        let due = self.wakes.take_due(now, refreshing);
        let users = due
            .users
            .into_iter()
            .filter_map(|user_id| match self.slots.get(&user_id) {
                Some(Slot::Parked(parked)) => Some((user_id, parked.clone())),
                _ => None,
            })
            .collect();
        (users, due.backlog)
    }

    /// When the wake timer must fire, if it must be (re)armed (see [`WakeSchedule::arm`]).
    pub fn arm_wakes(&mut self) -> Option<DateTime<Utc>> {
        self.wakes.arm()
    }

    fn entry_of(&self, user_id: &UserId, slot: &Slot, restarts: &RestartPolicy) -> ActorEntry {
        match slot {
            Slot::Live(actor) => ActorEntry::Live(actor.clone()),
            Slot::Parked(parked) => ActorEntry::Known(ActorView::Live(parked.schedule.info(
                user_id,
                parked.status(),
                restarts.total(user_id),
            ))),
            Slot::Restarting => ActorEntry::Known(ActorView::Restarting {
                user_id: user_id.clone(),
                restarts: restarts.total(user_id),
            }),
        }
    }

    /// One user's entry for the admin API.
    pub fn entry(&self, user_id: &str, restarts: &RestartPolicy) -> Option<ActorEntry> {
        let (key, slot) = self.slots.get_key_value(user_id)?;
        Some(self.entry_of(key, slot, restarts))
    }

    /// Up to `limit` entries ordered by user id after `after`, and the total count.
    pub fn page(&self, after: Option<String>, limit: usize, restarts: &RestartPolicy) -> ActorPage {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = after.map_or(Unbounded, |a| Excluded(UserId::from(a)));
        let entries = self
            .slots
            .range((lower, Unbounded))
            .take(limit)
            .map(|(user_id, slot)| self.entry_of(user_id, slot, restarts))
            .collect();
        ActorPage {
            entries,
            total: self.slots.len(),
        }
    }

    fn sync_gauge(&self) {
        self.metrics.actors.set(self.slots.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        actors::{messages::ActorStatus, schedule::Schedule},
        metrics::StatusLabels,
    };

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn parked(refresh_at: i64, needs_reconnect: bool) -> Slot {
        Slot::Parked(Parked {
            schedule: Schedule {
                next_refresh_at: Some(at(refresh_at)).filter(|_| !needs_reconnect),
                refresh_count: 3,
                ..Schedule::default()
            },
            needs_reconnect,
        })
    }

    fn registry() -> (Registry, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let wakes = WakeSchedule::new(std::time::Duration::from_secs(60), 1);
        (Registry::new(wakes, metrics.clone()), metrics)
    }

    fn status_gauge(metrics: &Metrics, status: &'static str) -> i64 {
        metrics
            .actors_by_status
            .get_or_create(&StatusLabels { status })
            .get()
    }

    #[test]
    fn slots_keep_the_wake_schedule_and_the_gauges_in_step() {
        let (mut r, metrics) = registry();
        r.put(UserId::from("ann"), parked(10, false));
        r.put(UserId::from("bob"), parked(20, false));
        r.put(UserId::from("cat"), parked(0, true));
        assert_eq!((r.len(), r.parked()), (3, 3));
        assert_eq!(metrics.actors.get(), 3);
        assert_eq!(status_gauge(&metrics, "hibernating"), 2);
        assert_eq!(status_gauge(&metrics, "needs_reconnect"), 1);

        // Forgotten and crashed users leave the wake schedule with their parked slot.
        assert!(matches!(r.take("ann"), Some(Slot::Parked(_))));
        assert!(matches!(
            r.put(r.key("bob"), Slot::Restarting),
            Some(Slot::Parked(_))
        ));
        assert_eq!(r.take_due(at(3600), 0), (Vec::new(), false));
        assert_eq!(r.arm_wakes(), None, "nothing left to wake");
        assert_eq!((r.len(), r.parked()), (2, 1));
        assert_eq!(metrics.actors.get(), 2);
        assert_eq!(status_gauge(&metrics, "hibernating"), 0);

        // Parked again with a new plan, it is woken for that one (5 s ahead) and no other.
        r.put(r.key("bob"), parked(30, false));
        assert_eq!(r.arm_wakes(), Some(at(25)));
        let (due, backlog) = r.take_due(at(25), 0);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.as_ref(), "bob");
        assert!(!backlog);
        // Taken for waking, it stays parked until its actor runs.
        assert!(matches!(r.get("bob"), Some(Slot::Parked(_))));
        assert_eq!(status_gauge(&metrics, "hibernating"), 1);
    }

    #[test]
    fn views_answer_parked_and_restarting_users_without_an_actor() {
        let (mut r, _) = registry();
        let mut restarts = RestartPolicy::default();
        let bob: UserId = UserId::from("bob");
        restarts.failed(&bob, tokio::time::Instant::now());
        r.put(UserId::from("cat"), parked(0, true));
        r.put(bob.clone(), Slot::Restarting);
        r.put(UserId::from("ann"), parked(10, false));
        let page = r.page(None, 2, &restarts);
        assert_eq!(page.total, 3);
        let views: Vec<_> = page
            .entries
            .into_iter()
            .map(|e| match e {
                ActorEntry::Known(view) => view,
                ActorEntry::Live(_) => unreachable!("no live actor here"),
            })
            .collect();
        match &views[..] {
            [
                ActorView::Live(ann),
                ActorView::Restarting { user_id, restarts },
            ] => {
                assert_eq!(ann.user_id, "ann");
                assert_eq!(ann.status, ActorStatus::Hibernating);
                assert_eq!(ann.next_refresh_at, Some(at(10)));
                assert_eq!(ann.refresh_count, 3);
                assert_eq!((user_id.as_str(), *restarts), ("bob", 1));
            }
            _ => panic!("two views in user id order"),
        }
        let page = r.page(Some("bob".into()), 10, &restarts);
        assert_eq!(page.entries.len(), 1);
        match r.entry("cat", &restarts) {
            Some(ActorEntry::Known(ActorView::Live(cat))) => {
                assert_eq!(cat.status, ActorStatus::NeedsReconnect);
                assert_eq!(cat.next_refresh_at, None);
            }
            _ => panic!("cat is parked"),
        }
        assert!(r.entry("nobody", &restarts).is_none());
    }
}
