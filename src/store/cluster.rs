//! Queries of a PostgreSQL cluster (docs/contract.md section 8): the one statement that renews,
//! claims and releases a node's shard leases and beats its heart, the graceful release, the
//! live nodes, a shard's owner, and the change notices (`LISTEN/NOTIFY`). The database's clock
//! sets every expiry, so nodes' clocks never have to agree. Must not decide anything: which
//! shards to claim or release is the caller's (`node::leases`) choice.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement, Value};

use super::{Store, StoreError};
use crate::ids::{Epoch, Shard};

/// The channel every node listens on for change notices.
pub const CHANGES_CHANNEL: &str = "tokenwarden_changes";

/// This process as a lease holder.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: String,
    /// Random per process: a restarted node with the same id never renews its predecessor's
    /// leases.
    pub process_token: String,
    pub advertise_url: String,
    pub started_at: DateTime<Utc>,
}

/// The fence of a refresh-path write on a cluster: the writer's lease on the user's shard,
/// as its epoch and the owning process's token. A write checks both against `shard_leases` in
/// its own statement: the epoch alone could be issued twice if a database failover lost the
/// claim that first took it (`docs/cluster.md`, "Fencing a write"), the token never is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub epoch: Epoch,
    pub owner_token: Arc<str>,
}

/// What one renewal asks for.
#[derive(Debug, Clone, Default)]
pub struct LeaseRequest {
    /// Free or lapsed shards to claim, at most.
    pub claim: i64,
    /// Held shards to give up.
    pub release: Vec<Shard>,
    /// Actors this node runs (shown by `/admin/nodes`).
    pub actors: i64,
}

/// What one renewal answered.
#[derive(Debug, Clone, Default)]
pub struct LeaseGrant {
    /// Every shard held after the renewal, with its epoch.
    pub held: Vec<(Shard, Epoch)>,
    /// Live nodes other than this one, and how many of them sort before it: the node's rank
    /// decides its share.
    pub other_nodes: i64,
    pub rank: i64,
}

/// A live node as `/admin/nodes` shows it.
#[derive(Debug, Clone, FromQueryResult)]
pub struct NodeRow {
    pub node_id: String,
    pub advertise_url: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub shards: i64,
    pub actors: i64,
}

#[derive(FromQueryResult)]
struct GrantRow {
    shard: Option<Shard>,
    epoch: Option<Epoch>,
    other_nodes: i64,
    rank: i64,
}

/// Renews the held leases (but those released), claims up to `claim` free or lapsed ones
/// (each claim bumps the epoch), releases the given ones and upserts the node's heartbeat (and
/// forgets nodes gone for an hour), all in one statement. The heartbeat writes the node's id
/// and address again each time: a row changed by hand (say, an address pointed elsewhere) is
/// put right within a renewal period. The two updates touch disjoint rows: a
/// lapsed lease of our own is renewed, never claimed.
const RENEW_SQL: &str = "
WITH claimable AS (
  SELECT shard FROM shard_leases
  WHERE (owner_token IS NULL OR expires_at < now()) AND owner_token IS DISTINCT FROM $2
  ORDER BY shard LIMIT $4 FOR UPDATE SKIP LOCKED
), renewed AS (
  UPDATE shard_leases SET expires_at = now() + make_interval(secs => $3)
  WHERE owner_token = $2 AND NOT (shard = ANY($5))
  RETURNING shard, epoch
), claimed AS (
  UPDATE shard_leases SET owner_node = $1, owner_token = $2, epoch = epoch + 1,
    expires_at = now() + make_interval(secs => $3)
  WHERE shard IN (SELECT shard FROM claimable)
  RETURNING shard, epoch
), released AS (
  UPDATE shard_leases SET owner_node = NULL, owner_token = NULL, expires_at = NULL
  WHERE owner_token = $2 AND shard = ANY($5)
  RETURNING shard
), beat AS (
  INSERT INTO cluster_nodes (process_token, node_id, advertise_url, started_at, last_seen, expires_at, actors)
  VALUES ($2, $1, $6, $7, now(), now() + make_interval(secs => $3), $8)
  ON CONFLICT (process_token) DO UPDATE SET last_seen = now(), expires_at = EXCLUDED.expires_at,
    actors = EXCLUDED.actors, node_id = EXCLUDED.node_id, advertise_url = EXCLUDED.advertise_url
  RETURNING 1
), forgotten AS (
  DELETE FROM cluster_nodes WHERE expires_at < now() - interval '1 hour'
  RETURNING 1
), held AS (
  SELECT shard, epoch FROM renewed UNION ALL SELECT shard, epoch FROM claimed
)
SELECT held.shard, held.epoch,
  (SELECT count(*) FROM cluster_nodes WHERE expires_at > now() AND process_token <> $2) AS other_nodes,
  (SELECT count(*) FROM cluster_nodes WHERE expires_at > now() AND process_token <> $2
     AND (node_id, process_token) < ($1, $2)) AS rank
FROM (SELECT 1) AS one LEFT JOIN held ON TRUE";

impl Store {
    /// The number of shards fixed at the first migration.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// The shard of `user_id`.
    pub fn shard_of(&self, user_id: &str) -> Shard {
        Shard::new(migration::shard_of(user_id, self.shard_count) as i32)
    }

    /// Whether the database is PostgreSQL (the only backend that runs as a cluster).
    pub fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
    }

    /// One renewal of this node's leases (see [`RENEW_SQL`]).
    pub async fn renew_leases(
        &self,
        node: &NodeIdentity,
        ttl_secs: f64,
        request: &LeaseRequest,
    ) -> Result<LeaseGrant, StoreError> {
        let values: Vec<Value> = vec![
            node.node_id.clone().into(),
            node.process_token.clone().into(),
            ttl_secs.into(),
            request.claim.max(0).into(),
            request
                .release
                .iter()
                .map(|s| s.get())
                .collect::<Vec<i32>>()
                .into(),
            node.advertise_url.clone().into(),
            node.started_at.into(),
            request.actors.into(),
        ];
        let statement = Statement::from_sql_and_values(DbBackend::Postgres, RENEW_SQL, values);
        let rows = GrantRow::find_by_statement(statement).all(&self.db).await?;
        let mut grant = LeaseGrant::default();
        for row in rows {
            grant.other_nodes = row.other_nodes;
            grant.rank = row.rank;
            if let (Some(shard), Some(epoch)) = (row.shard, row.epoch) {
                grant.held.push((shard, epoch));
            }
        }
        Ok(grant)
    }

    /// Gives up every lease of this process and leaves the node list; the caller then tells
    /// the other nodes to claim at once (a graceful stop hands over in moments, not after the
    /// TTL).
    pub async fn release_all(&self, node: &NodeIdentity) -> Result<(), StoreError> {
        let token: Value = node.process_token.clone().into();
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE shard_leases SET owner_node = NULL, owner_token = NULL, expires_at = NULL \
                 WHERE owner_token = $1",
                [token.clone()],
            ))
            .await?;
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM cluster_nodes WHERE process_token = $1",
                [token],
            ))
            .await?;
        Ok(())
    }

    /// Every live node, with the shards it holds.
    pub async fn live_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let statement = Statement::from_string(
            DbBackend::Postgres,
            "SELECT n.node_id, n.advertise_url, n.started_at, n.last_seen, n.actors, \
               (SELECT count(*) FROM shard_leases l \
                 WHERE l.owner_token = n.process_token AND l.expires_at > now()) AS shards \
             FROM cluster_nodes n WHERE n.expires_at > now() ORDER BY n.node_id, n.process_token",
        );
        Ok(NodeRow::find_by_statement(statement).all(&self.db).await?)
    }

    /// Where the live owner of `shard` is reached, and its process token.
    pub async fn shard_owner(&self, shard: Shard) -> Result<Option<(String, String)>, StoreError> {
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT n.advertise_url, n.process_token FROM shard_leases l \
             JOIN cluster_nodes n ON n.process_token = l.owner_token \
             WHERE l.shard = $1 AND l.expires_at > now()",
            [shard.into()],
        );
        let row = self.db.query_one_raw(statement).await?;
        Ok(match row {
            Some(row) => Some((
                row.try_get("", "advertise_url")?,
                row.try_get("", "process_token")?,
            )),
            None => None,
        })
    }

    /// The lease of `shard` now (`None` when no process holds it): a write refused under
    /// another fence was fenced.
    pub async fn shard_fence(&self, shard: Shard) -> Result<Option<Fence>, StoreError> {
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT epoch, owner_token FROM shard_leases WHERE shard = $1",
            [shard.into()],
        );
        let Some(row) = self.db.query_one_raw(statement).await? else {
            return Ok(None);
        };
        let owner: Option<String> = row.try_get("", "owner_token")?;
        Ok(match owner {
            Some(owner) => Some(Fence {
                epoch: row.try_get("", "epoch")?,
                owner_token: owner.into(),
            }),
            None => None,
        })
    }

    /// Sends a change notice to every node (PostgreSQL only; a no-op elsewhere). `payload` is
    /// sealed (`node::Notices::send`): listeners drop anything else.
    pub async fn notify(&self, payload: &str) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Ok(());
        }
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [CHANGES_CHANNEL.into(), payload.into()],
            ))
            .await?;
        Ok(())
    }
}

/// The notice that asks every node to renew (and so claim) now. This and the two below are
/// the bodies of notices, which travel sealed (`node::Notices`).
pub const REBALANCE: &str = "rebalance";
/// The notice of an operator's resync: every node queues its own users' pushes.
pub const RESYNC: &str = "resync";
/// Prefix of a user's change notice; the user id follows.
pub const USER_PREFIX: &str = "user:";
