//! The explored transition graph of the recovery machine: a snapshot of
//! the whole transition table, and the properties of the exploration.

use std::sync::OnceLock;

use walrep_states::recovery::explore::{explore_standby, Graph, MAX_EXPANDED};
use walrep_states::recovery::{EventKind, StateKind};

/// Exploring takes seconds in a debug build: once for both tests.
fn graph() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(explore_standby)
}

#[test]
fn transition_table() {
    let graph = graph();
    assert!(graph.violations.is_empty(), "{:#?}", graph.violations);
    let header = format!(
        "{} states, {} transitions (state, event, state), {} edges with distinct actions\n\n",
        graph.states.len(),
        graph.transitions().len(),
        graph.edges.len()
    );
    insta::assert_snapshot!("transition_table", header + &graph.table());
}

#[test]
fn exploration_is_complete_and_reaches_every_state() {
    let graph = graph();
    assert!(
        graph.expanded < MAX_EXPANDED,
        "exploration hit its bound ({MAX_EXPANDED}): the abstraction no longer converges"
    );
    assert_eq!(graph.states, StateKind::ALL.into_iter().collect());
    // Every event kind was tried in every state.
    for state in StateKind::ALL {
        for kind in EventKind::ALL {
            assert!(
                graph
                    .edges
                    .iter()
                    .any(|e| e.from == state && e.event == kind),
                "{state} never saw {kind}"
            );
        }
    }
    // Shutdown leads to Stopped from every state but Stopped.
    for state in StateKind::ALL
        .into_iter()
        .filter(|s| *s != StateKind::Stopped)
    {
        assert!(graph.has_edge(state, EventKind::ShutdownRequested, StateKind::Stopped));
    }
    // Promotion from every recovering state.
    for state in StateKind::ALL.into_iter().filter(|s| s.is_recovering()) {
        assert!(graph.has_edge(state, EventKind::PromoteRequested, StateKind::Promoting));
    }
    // Nothing leaves Stopped.
    assert!(graph
        .edges
        .iter()
        .filter(|e| e.from == StateKind::Stopped)
        .all(|e| e.is_noop()));
}
