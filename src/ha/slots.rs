//! Replication slots for the members, as Patroni's member slots: the
//! leader keeps one physical slot per other member, named after it
//! ([`slot_name`]), so the WAL a member has not received yet stays on the
//! leader while it is away (bounded by `max_slot_wal_keep_size`); every
//! member streams on its own slot (`primary_slot_name`, set by the HA loop
//! with `primary_conninfo`).
//!
//! Which slots the leader keeps is decided by [`MemberSlots::plan`], pure:
//! a slot for every member key it sees, kept `ha_member_slots_ttl` after
//! the key is gone (Patroni's `member_slots_ttl`: a member that restarts or
//! loses etcd for a moment finds its WAL kept), then dropped. Only slots
//! the HA layer made are ever dropped: their names are kept in
//! `DATADIR/ha_member_slots` ([`MANAGED_FILE`]), so an operator's slot is
//! never touched and a slot made before a restart is still cleaned up.
//! On a node that does not lead, the slots it made while it led are moved
//! forward with its replay position, so they hold no WAL there (Patroni
//! advances them on replicas too) and are ready if it leads again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use walrep_states::{Lsn, Millis};

use crate::node::Node;
use crate::replication::slots::{SlotError, MAX_SLOT_NAME_LEN};

/// The file naming the slots the HA layer made, in the data directory.
pub const MANAGED_FILE: &str = "ha_member_slots";

/// The connection id slot drops are made with: no walsender has it (they
/// count from 1), so a slot a member streams on is never dropped under it.
const NO_CONNECTION: u64 = 0;

/// The slot of member `member`, as Patroni names it: lower case; `-` and
/// `.` (common in host names) become `_`; any other character outside
/// `[a-z0-9_]` becomes `u` and its code point in four or more digits;
/// at most 63 bytes. Different members may map to one name; the leader then
/// keeps one slot for them.
pub fn slot_name(member: &str) -> String {
    let mut out = String::with_capacity(member.len());
    for c in member.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => out.push(c),
            '-' | '.' => out.push('_'),
            other => out.push_str(&format!("u{:04}", other as u32)),
        }
    }
    out.truncate(MAX_SLOT_NAME_LEN);
    out
}

/// What the leader does to its slots this cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotPlan {
    /// Member slots to create (they do not exist yet).
    pub create: Vec<String>,
    /// Slots of members gone longer than `ha_member_slots_ttl`.
    pub drop: Vec<String>,
}

/// The member slots one node keeps track of across HA cycles.
#[derive(Debug, Clone)]
pub struct MemberSlots {
    /// This member's own slot name: never kept on itself.
    own: String,
    /// `ha_member_slots_ttl`.
    ttl_ms: u64,
    /// Slots the HA layer made or adopted → when its member's key was last
    /// seen (while leading; set to the start of leadership otherwise).
    managed: BTreeMap<String, Millis>,
    /// Whether the last plan was made as the leader.
    leading: bool,
    /// Saving [`MANAGED_FILE`] failed once: it is not written again.
    pub(crate) save_failed: bool,
}

impl MemberSlots {
    /// Member `own_member`'s tracker, with the slots a previous run made
    /// (`managed`, from [`load_managed`]).
    pub fn new(own_member: &str, ttl_ms: u64, managed: BTreeSet<String>) -> MemberSlots {
        MemberSlots {
            own: slot_name(own_member),
            ttl_ms,
            managed: managed.into_iter().map(|n| (n, Millis(0))).collect(),
            leading: false,
            save_failed: false,
        }
    }

    /// The slots the HA layer made, sorted.
    pub fn managed(&self) -> BTreeSet<String> {
        self.managed.keys().cloned().collect()
    }

    /// The plan of a leader at `now` that sees the keys of `members` and
    /// has the slots `existing` (`active`: those a walsender streams on):
    /// create the slot of every member seen that has none; drop the slots
    /// of members not seen for longer than the TTL. A slot streamed on
    /// counts as seen (its member is alive, only away from etcd). A node
    /// that has just become leader counts every slot it made earlier as
    /// seen now, so a member briefly away at that moment keeps its slot
    /// for a whole TTL.
    pub fn plan(
        &mut self,
        now: Millis,
        members: &[&str],
        existing: &BTreeSet<String>,
        active: &BTreeSet<String>,
    ) -> SlotPlan {
        if !self.leading {
            for seen in self.managed.values_mut() {
                *seen = now;
            }
            self.leading = true;
        }
        for m in members {
            let name = slot_name(m);
            if !name.is_empty() && name != self.own {
                self.managed.insert(name, now);
            }
        }
        for (name, seen) in self.managed.iter_mut() {
            if active.contains(name) {
                *seen = now;
            }
        }
        let ttl = self.ttl_ms;
        let expired: Vec<String> = self
            .managed
            .iter()
            .filter(|(_, seen)| now.0.saturating_sub(seen.0) > ttl)
            .map(|(n, _)| n.clone())
            .collect();
        let drop = expired
            .iter()
            .filter(|n| existing.contains(*n))
            .cloned()
            .collect();
        for n in expired.iter().filter(|n| !existing.contains(*n)) {
            self.managed.remove(n);
        }
        let create = self
            .managed
            .keys()
            .filter(|n| !existing.contains(*n) && !expired.contains(n))
            .cloned()
            .collect();
        SlotPlan { create, drop }
    }

    /// A dropped slot is no longer the HA layer's.
    pub fn forget(&mut self, name: &str) {
        self.managed.remove(name);
    }

    /// The node does not lead (any more): the next [`MemberSlots::plan`]
    /// starts a new leadership.
    pub fn step_down(&mut self) {
        self.leading = false;
    }
}

/// The slots a previous run made, from `DATADIR/ha_member_slots` (one
/// name a line); none when the file is absent or unreadable (a name that
/// is not a valid slot name is skipped).
pub fn load_managed(datadir: &Path) -> BTreeSet<String> {
    let Ok(text) = std::fs::read_to_string(datadir.join(MANAGED_FILE)) else {
        return BTreeSet::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|n| crate::replication::slots::validate_name(n).is_ok())
        .map(str::to_string)
        .collect()
}

/// Why a slot step failed (logged; the next cycle tries again).
#[derive(Debug, thiserror::Error)]
pub enum MemberSlotError {
    /// Creating or dropping a slot failed.
    #[error("replication slot \"{name}\": {source}")]
    Slot {
        /// The slot.
        name: String,
        /// What the slot manager said.
        source: SlotError,
    },
    /// `DATADIR/ha_member_slots` could not be written.
    #[error("could not write {MANAGED_FILE}: {0}")]
    Save(#[from] crate::storage::StorageError),
}

/// Carry out `plan` on `node`'s slots; the new slots reserve WAL from the
/// last checkpoint's redo point (PostgreSQL's RESERVE_WAL), or the oldest
/// WAL kept if that is later. Returns the slots created and dropped; the
/// first failure stops the rest (the next cycle plans again).
pub fn apply(
    node: &Node,
    slots: &mut MemberSlots,
    plan: &SlotPlan,
) -> Result<(Vec<String>, Vec<String>), MemberSlotError> {
    let (mut created, mut dropped) = (Vec::new(), Vec::new());
    for name in &plan.create {
        let restart = reserve_from(node);
        match node.slots.create(name, false, NO_CONNECTION, restart) {
            Ok(_) | Err(SlotError::AlreadyExists(_)) => created.push(name.clone()),
            Err(source) => {
                return Err(MemberSlotError::Slot {
                    name: name.clone(),
                    source,
                })
            }
        }
    }
    for name in &plan.drop {
        match node.slots.drop_slot(name, NO_CONNECTION, None) {
            Ok(()) | Err(SlotError::DoesNotExist(_)) => {
                slots.forget(name);
                dropped.push(name.clone());
            }
            Err(source) => {
                return Err(MemberSlotError::Slot {
                    name: name.clone(),
                    source,
                })
            }
        }
    }
    Ok((created, dropped))
}

/// Where a new member slot starts holding WAL.
fn reserve_from(node: &Node) -> Lsn {
    let seg = node.control().wal_segment_size;
    let oldest = node
        .segdir
        .oldest_segment()
        .ok()
        .flatten()
        .map(|s| s.start_lsn(seg))
        .unwrap_or(Lsn::INVALID);
    node.control().redo_lsn.max(oldest)
}

/// On a node that does not lead: move the slots the HA layer made up to
/// `replay` (never back), so they hold no WAL a standby has replayed.
pub fn advance(node: &Node, slots: &MemberSlots, replay: Lsn) {
    for name in slots.managed.keys() {
        node.slots.confirm_flush(name, replay);
    }
}

/// Write the managed slot names to `DATADIR/ha_member_slots`, durably.
pub fn save_managed(node: &Node, names: &BTreeSet<String>) -> Result<(), MemberSlotError> {
    let mut text = String::new();
    for n in names {
        text.push_str(n);
        text.push('\n');
    }
    crate::storage::durable_replace(
        &*node.storage,
        &node.dir.root.join(MANAGED_FILE),
        text.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_sanitised_as_patroni_does() {
        assert_eq!(slot_name("n1"), "n1");
        assert_eq!(slot_name("Node-1.example"), "node_1_example");
        assert_eq!(slot_name("a b"), "au0032b");
        assert_eq!(slot_name("é"), "u0233");
        assert_eq!(slot_name(&"x".repeat(80)).len(), 63);
        assert!(crate::replication::slots::validate_name(&slot_name("Zz-9.q w")).is_ok());
    }

    #[test]
    fn the_leader_keeps_a_slot_per_other_member() {
        let mut s = MemberSlots::new("n1", 10_000, BTreeSet::new());
        let plan = s.plan(Millis(0), &["n1", "n2", "N-3"], &set(&[]), &set(&[]));
        assert_eq!(plan.create, vec!["n2", "n_3"]);
        assert!(plan.drop.is_empty());
        assert_eq!(s.managed(), set(&["n2", "n_3"]));
        // Created: nothing more to do.
        let plan = s.plan(
            Millis(1_000),
            &["n1", "n2", "N-3"],
            &set(&["n2", "n_3"]),
            &set(&[]),
        );
        assert_eq!(plan, SlotPlan::default());
    }

    #[test]
    fn a_member_briefly_away_keeps_its_slot_and_one_gone_longer_loses_it() {
        let mut s = MemberSlots::new("n1", 10_000, BTreeSet::new());
        let existing = set(&["n2", "n3", "operators"]);
        s.plan(Millis(0), &["n2", "n3"], &set(&["operators"]), &set(&[]));
        // n3's key is last seen at 1 s.
        let plan = s.plan(Millis(1_000), &["n2", "n3"], &existing, &set(&[]));
        assert_eq!(plan, SlotPlan::default());
        let plan = s.plan(Millis(2_000), &["n2"], &existing, &set(&[]));
        assert_eq!(plan, SlotPlan::default());
        // Still within the TTL of its last sighting (1 s ... 11 s).
        let plan = s.plan(Millis(11_000), &["n2"], &existing, &set(&[]));
        assert_eq!(plan, SlotPlan::default());
        let plan = s.plan(Millis(11_001), &["n2"], &existing, &set(&[]));
        assert_eq!(plan.drop, vec!["n3"]);
        s.forget("n3");
        assert_eq!(s.managed(), set(&["n2"]));
        // The operator's slot is never the HA layer's.
        assert!(!s.managed().contains("operators"));
    }

    #[test]
    fn a_member_back_before_the_ttl_keeps_its_slot() {
        let mut s = MemberSlots::new("n1", 5_000, BTreeSet::new());
        let existing = set(&["n2"]);
        s.plan(Millis(0), &["n2"], &set(&[]), &set(&[]));
        s.plan(Millis(4_000), &[], &existing, &set(&[]));
        let plan = s.plan(Millis(4_500), &["n2"], &existing, &set(&[]));
        assert_eq!(plan, SlotPlan::default());
        let plan = s.plan(Millis(9_000), &[], &existing, &set(&[]));
        assert_eq!(plan, SlotPlan::default(), "seen again at 4.5 s");
    }

    #[test]
    fn a_slot_streamed_on_is_kept_while_its_key_is_gone() {
        let mut s = MemberSlots::new("n1", 1_000, BTreeSet::new());
        let existing = set(&["n2"]);
        s.plan(Millis(0), &["n2"], &set(&[]), &set(&[]));
        let plan = s.plan(Millis(5_000), &[], &existing, &set(&["n2"]));
        assert_eq!(plan, SlotPlan::default());
        assert_eq!(
            s.plan(Millis(6_001), &[], &existing, &set(&[])).drop,
            vec!["n2"]
        );
    }

    #[test]
    fn ttl_zero_drops_a_slot_once_its_key_is_gone() {
        let mut s = MemberSlots::new("n1", 0, BTreeSet::new());
        let existing = set(&["n2"]);
        s.plan(Millis(0), &["n2"], &set(&[]), &set(&[]));
        assert_eq!(
            s.plan(Millis(0), &["n2"], &existing, &set(&[])),
            SlotPlan::default()
        );
        assert_eq!(
            s.plan(Millis(1), &[], &existing, &set(&[])).drop,
            vec!["n2"]
        );
    }

    #[test]
    fn slots_made_in_an_earlier_leadership_are_kept_a_full_ttl_from_the_new_one() {
        // Loaded from the file: made before a restart or an earlier term.
        let mut s = MemberSlots::new("n1", 10_000, set(&["n2", "n9"]));
        let existing = set(&["n2", "n9"]);
        let plan = s.plan(Millis(50_000), &["n2"], &existing, &set(&[]));
        assert_eq!(plan, SlotPlan::default(), "n9 counts as seen at 50 s");
        assert_eq!(
            s.plan(Millis(60_001), &["n2"], &existing, &set(&[])).drop,
            vec!["n9"]
        );
        // Stepping down and leading again restarts the clock.
        s.step_down();
        assert_eq!(
            s.plan(Millis(90_000), &[], &existing, &set(&[])),
            SlotPlan::default()
        );
        // A slot the manager lost (dropped by hand) is forgotten once expired.
        assert_eq!(
            s.plan(Millis(100_001), &[], &set(&[]), &set(&[])).drop,
            Vec::<String>::new()
        );
        assert!(s.managed().is_empty());
    }

    #[test]
    fn the_managed_file_round_trips_and_skips_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_managed(dir.path()).is_empty());
        std::fs::write(dir.path().join(MANAGED_FILE), "n2\n\nBad Name\nn_3\n").unwrap();
        assert_eq!(load_managed(dir.path()), set(&["n2", "n_3"]));
    }
}
