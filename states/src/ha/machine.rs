//! The HA decision: one cycle's actions from the cluster view and the node's
//! own state, and the little state that must survive between cycles.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::action::{HaAction, HaDecision, Severity};
use super::input::{HaConfig, HaConfigError, HaInput, LocalRole};
use super::records::{MemberRecord, MemberRole};
use crate::{Lsn, Millis};

/// What one node's HA loop remembers between cycles. Everything else is read
/// again from the store and the node each cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaState {
    /// The node's settings.
    config: HaConfig,
    /// The deadline of the last `OpenGate`, if the gate was opened.
    gate_until: Option<Millis>,
    /// Standbys seen `sync` while a slot was free, with the primary's flush
    /// LSN at that moment: they are confirmed once they flushed that far.
    sync_targets: BTreeMap<String, Lsn>,
    /// A switchover this leader is carrying out: when it fenced itself.
    handover_fenced_at: Option<Millis>,
    /// Set once the loop must stop for good.
    halted: Option<String>,
}

impl HaState {
    /// A machine for a node that just started: its gate is closed.
    pub fn new(config: HaConfig) -> Result<HaState, HaConfigError> {
        config.validate()?;
        Ok(HaState {
            config,
            gate_until: None,
            sync_targets: BTreeMap::new(),
            handover_fenced_at: None,
            halted: None,
        })
    }

    /// The node's settings.
    pub fn config(&self) -> &HaConfig {
        &self.config
    }

    /// The fence deadline last handed to the node, if its gate is open.
    pub fn gate_until(&self) -> Option<Millis> {
        self.gate_until
    }

    /// Why the loop halted, if it did.
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// Decides one HA cycle (see the module documentation for the rules).
    pub fn decide(&mut self, input: &HaInput) -> HaDecision {
        let mut actions = Vec::new();
        if input.local.gate_open && !matches!(input.local.role, LocalRole::Primary) {
            actions.push(HaAction::CloseGate);
        }
        actions.push(HaAction::PublishMember(self.member_record(input)));
        HaDecision {
            actions,
            why: "no decision yet".to_string(),
            severity: Severity::Info,
            next_cycle_ms: self.config.loop_wait_ms,
        }
    }

    /// The record this node publishes about itself.
    fn member_record(&self, input: &HaInput) -> MemberRecord {
        let local = &input.local;
        let role = match local.role {
            LocalRole::Primary if local.gate_open => MemberRole::Primary,
            LocalRole::Primary => MemberRole::Fenced,
            LocalRole::Standby => MemberRole::Standby,
            LocalRole::Promoting => MemberRole::Promoting,
            LocalRole::Demoting => MemberRole::Demoting,
            LocalRole::Starting => MemberRole::Starting,
        };
        MemberRecord {
            name: self.config.name.clone(),
            role,
            system_identifier: local.system_identifier,
            timeline: local.timeline,
            flush_lsn: local.flush_lsn,
            replay_lsn: local.replay_lsn,
            repl_addr: self.config.repl_addr.clone(),
            client_addr: self.config.client_addr.clone(),
            status_url: self.config.status_url.clone(),
            nofailover: self.config.nofailover,
            healthy: local.healthy,
            ha_paused_seen: input.view.as_ref().is_ok_and(|v| v.paused()),
            version: self.config.version.clone(),
        }
    }
}

/// Decides one HA cycle for `state`: the free-function form of
/// [`HaState::decide`].
pub fn decide(state: &mut HaState, input: &HaInput) -> HaDecision {
    state.decide(input)
}
