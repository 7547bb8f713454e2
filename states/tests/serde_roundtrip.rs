//! A recovery core survives serde: serialized mid-stream and restored, it
//! reacts to the next events exactly as the original (statig restores the
//! machine uninitialized; entry actions only emit actions, and the states
//! used here have none).

mod common;

use common::*;
use walrep_states::recovery::{Recovery, RecoveryConfig};

#[test]
fn a_restored_core_continues_identically() {
    let mut s = Scenario::new(RecoveryConfig::default());
    s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
    s.ev(no_history(2)).ev(no_local_history(2));
    s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
    let sid = s.session();
    s.ev(connected(sid, 1, at(3, 0)));

    let json = serde_json::to_string(&s.core).expect("serializes");
    let restored: Recovery = serde_json::from_str(&json).expect("deserializes");
    let mut copy = Scenario {
        core: restored,
        now: s.now,
        trace: Vec::new(),
        actions: Vec::new(),
    };
    assert_eq!(copy.state(), s.state());
    for event in [
        flushed(sid, 1, at(2, 0x9000)),
        eow(at(2, 0x9000)),
        lost(sid),
    ] {
        s.ev(event.clone());
        copy.ev(event);
        assert_eq!(copy.actions, s.actions);
        assert_eq!(copy.state(), s.state());
    }
    assert_eq!(copy.core.status(), s.core.status());
}
