//! Automatic failover decisions: what one node does in one HA cycle, as a
//! pure function of what it reads from the consensus store (etcd) and of its
//! own state.
//!
//! # The promise
//!
//! No write acknowledged under synchronous replication is lost by an
//! automatic promotion, and at no time do two nodes accept writes. Two
//! mechanisms keep it, as in Patroni's `synchronous_mode_strict`, with the
//! fence made explicit:
//!
//! - **The lease fences the primary.** Each node holds one etcd lease (TTL
//!   `ha_ttl`) carrying its `members/{name}` key and, for the leader, the
//!   `leader` key. The leader's write gate stays open only until
//!   *send time of the last successful keepalive + ttl − `ha_fence_margin`*,
//!   on its own monotonic clock ([`HaAction::OpenGate`] carries that
//!   absolute deadline and the node enforces it at every write's admission
//!   and every acknowledgement, so a stalled HA loop still fences). etcd can
//!   expire the key no earlier than send time + ttl, so the old primary has
//!   stopped acknowledging before anyone can take the key, as long as the
//!   margin covers the clock-rate error over one ttl. A node starts fenced;
//!   the gate opens only once a fresh read shows the key as its own on the
//!   lease just renewed, and `sync` naming it leader.
//! - **`sync` names who may take over.** The leader keeps the `sync` record
//!   `{leader, sync_standbys}` and tells syncrep which standbys it may count
//!   ([`HaAction::SetSyncAllowed`]). A standby is added only once it is
//!   *confirmed*: synchronous in the replication view, while `sync` has fewer
//!   standbys than `FIRST n` asks for (so no write can be acknowledged
//!   meanwhile), and flushed up to the primary's flush position taken when it
//!   was first seen so. `sync` is written first (CAS on its mod_revision),
//!   then syncrep counts it. Removing goes the other way round: syncrep stops
//!   counting, then `sync` is rewritten. `sync` never lists more standbys than
//!   `FIRST n`, so each acknowledgement needed every listed standby: every
//!   standby in `sync` holds every acknowledged write. This needs syncrep to
//!   pick its `FIRST n` among the allowed standbys only (commits wait while
//!   fewer are allowed) and never to degrade to local commits under HA.
//!   A listed standby outranked by a newly connected one stays listed while
//!   it streams; a standby that stops streaming is removed.
//!
//! # Who may take a free leader key
//!
//! A healthy node, not `ha_nofailover`, whose system identifier matches
//! `initialize`, whose timeline is not behind the last one in `history`,
//! listed in `sync` (or `sync`'s leader itself — the old primary coming
//! back), when no other such member has flushed more (ties: the lower name
//! wins) and no member still reports an open primary; never while the
//! cluster is paused or while `leader`, `sync`, `initialize`, `history` or
//! `config` holds a value that does not parse (a stranger owns our prefix).
//! `ha_allow_async_failover` lets an unlisted standby in when no listed
//! member is alive (writes may be lost; the decision says so). A standby
//! that wins takes the key (CAS: key absent), CAS-writes `sync` =
//! `{leader: itself, []}`, then promotes; if that sync write fails it
//! releases the key in the next cycle instead of promoting. Once it runs as
//! primary on the new timeline it appends to `history` and clears a
//! `failover` request.
//!
//! # Every cycle (Patroni's order)
//!
//! The runtime renews the node's lease (keepalive), reads the cluster
//! linearizably, builds an [`HaInput`] and calls [`HaState::decide`]. The
//! [`HaDecision`] lists the actions to run **in order, stopping at the first
//! that fails** (a lost CAS is a failure), one sentence saying why, and when
//! to run the next cycle. Then:
//!
//! 1. Read failed: never decide leadership from it. A primary keeps its gate
//!    only until its own deadline; a standby keeps following.
//! 2. `initialize` differs from the local system identifier: halt, fenced.
//! 3. A promotion or demotion is running: wait for it.
//! 4. Running as primary: if the key is ours on the renewed lease, open the
//!    gate until the deadline, handle a switchover, keep `sync` right, write
//!    `initialize` and `history` if due. If another member holds the key:
//!    fenced, demote (rejoin against it; its unacknowledged tail is cut).
//!    If nobody holds it: take it back when eligible, else stay fenced.
//! 5. Running as standby: follow the leader's `repl_addr`; with no leader,
//!    race when eligible.
//! 6. Publish the member key when it changed.
//!
//! # Switchover and forced failover
//!
//! An operator writes `failover` `{leader, candidate, kind}`. A leader
//! starts only on a request younger than `ha_ttl` (older ones are cleared).
//! It picks the healthiest listed standby when none is named, refuses an
//! unlisted or unhealthy candidate, fences itself, waits until the candidate
//! has flushed the leader's last LSN (at most `ha_ttl`, else it clears the
//! request and reopens), then releases the key and stays fenced for up to
//! two TTLs while the candidate takes it; once someone leads it demotes.
//! Other members leave the race to a live, listed candidate for three TTLs
//! after the request, and the leader handing over leaves the healthiest
//! comparison. A forced failover (`kind: failover`) lets the named
//! candidate take a free key even if it is not in `sync`: writes may be
//! lost. Request ages use `requested_at_ms` against the node's wall clock.
//!
//! # Pause
//!
//! While `config.paused` is set nothing is promoted or demoted; the leader
//! keeps renewing and the fence still applies.
//!
//! # Layout
//!
//! - [`records`]: the JSON values of the keys.
//! - [`view`]: one read of the cluster ([`ClusterView`], [`Versioned`]).
//! - [`input`]: settings ([`HaConfig`]) and per-cycle input ([`HaInput`]).
//! - [`action`]: what a cycle asks for ([`HaAction`], [`HaDecision`]).
//! - [`machine`]: the decision ([`HaState`]).

pub mod action;
pub mod input;
pub mod machine;
pub mod records;
pub mod view;

pub use action::{HaAction, HaDecision, Severity};
pub use input::{
    DcsReadError, HaConfig, HaConfigError, HaInput, Lease, LocalRole, LocalState, ReplicaProgress,
    ReplicaSyncState, MIN_TTL_MS,
};
pub use machine::{decide, HaState};
pub use records::{
    ClusterConfigRecord, FailoverKind, FailoverRecord, HistoryEntry, MemberRecord, MemberRole,
    SyncRecord,
};
pub use view::{keys, ClusterView, Versioned};
