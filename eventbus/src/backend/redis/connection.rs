//! One connection type for a single Redis server and for a Redis Cluster.
//!
//! On a cluster every command goes to the node owning its key's slot, and a pipeline must keep
//! to one slot: [`SlotPipelines`] splits a batch of commands by slot (one pipeline per slot,
//! sent one after another), and is a single pipeline on a single server.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::hash_tables::FoldMap;

/// A pooled connection: to one server, or to a cluster (routing each command by its key).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Commands whose replies are ignored, grouped so that each pipeline keeps to one slot on a
/// cluster (on a single server, one pipeline, which keeps the commands' order).
pub(crate) enum SlotPipelines {
    /// A single server's pipeline.
    Single(Pipeline),
    /// A cluster's pipelines, by slot.
    Cluster(FoldMap<Slot, Pipeline>),
}

impl SlotPipelines {
    pub(crate) fn new(cluster: bool) -> Self {
        Self::with_capacity(cluster, 0)
    }

    /// Pipelines with room for `commands` commands without growing (on a single server).
    pub(crate) fn with_capacity(cluster: bool, commands: usize) -> Self {
        if cluster {
            SlotPipelines::Cluster(FoldMap::default())
        } else {
            SlotPipelines::Single(Pipeline::with_capacity(commands))
        }
    }

    /// Adds `cmd`, which touches `key`, with its reply ignored.
    pub(crate) fn add(&mut self, key: &str, cmd: Cmd) {
        let pipe = match self {
            SlotPipelines::Single(pipe) => pipe,
            SlotPipelines::Cluster(by_slot) => by_slot.entry(Slot::for_key(key)).or_default(),
        };
        pipe.add_command(cmd).ignore();
    }

    /// Sends every pipeline; the first error ends it.
    pub(crate) async fn send(self, conn: &mut Conn) -> redis::RedisResult<()> {
        match self {
            SlotPipelines::Single(pipe) if pipe.is_empty() => {}
            SlotPipelines::Single(pipe) => pipe.query_async::<()>(conn).await?,
            SlotPipelines::Cluster(by_slot) => {
                for pipe in by_slot.values() {
                    pipe.query_async::<()>(conn).await?;
                }
            }
        }
        Ok(())
    }
}
