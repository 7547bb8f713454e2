//! The trigger watcher thread: promote_trigger_file and the `walrep promote`
//! request file are seen, removed and reported; shutdown stops the thread.

mod support;

use std::fs;
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender};
use support::DEADLINE;
use walrep::standby::trigger::{
    request_promotion, spawn_trigger_watcher, spawn_trigger_watcher_with_sender, TriggerConfig,
    TriggerEvent, TriggerWatcherHandle, PROMOTE_SIGNAL_FILE, STANDBY_SIGNAL_FILE,
};
use walrep::storage::StdStorage;

/// Join a watcher after shutdown, within [`DEADLINE`].
fn join_within_deadline(handle: TriggerWatcherHandle) {
    let (tx, rx) = bounded(1);
    thread::spawn(move || {
        let _ = tx.send(handle.join());
    });
    rx.recv_timeout(DEADLINE)
        .expect("trigger watcher did not stop within the deadline")
        .expect("trigger watcher panicked");
}

fn next_event(events: &Receiver<TriggerEvent>) -> TriggerEvent {
    events
        .recv_timeout(DEADLINE)
        .expect("no trigger event within the deadline")
}

#[test]
fn trigger_file_and_promote_request_are_reported_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = tmp.path().join("standby data");
    fs::create_dir_all(&datadir).unwrap();
    fs::write(datadir.join(STANDBY_SIGNAL_FILE), b"").unwrap();
    let trigger = tmp.path().join("failover now");
    let config = TriggerConfig {
        promote_trigger_file: Some(trigger.clone()),
        ..TriggerConfig::new(&datadir)
    };
    let (shutdown_tx, shutdown_rx): (Sender<()>, Receiver<()>) = bounded(1);
    let (events_tx, events_rx) = bounded(4);
    let watcher = spawn_trigger_watcher_with_sender(config, shutdown_rx, events_tx).unwrap();

    fs::write(&trigger, b"").unwrap();
    assert_eq!(
        next_event(&events_rx),
        TriggerEvent::PromoteTriggerFileFound {
            path: trigger.display().to_string()
        }
    );
    assert!(!trigger.exists(), "the trigger file was not removed");

    let request = request_promotion(&StdStorage, &datadir).unwrap();
    assert_eq!(request, datadir.join(PROMOTE_SIGNAL_FILE));
    assert_eq!(next_event(&events_rx), TriggerEvent::PromoteRequested);
    assert!(
        !request.exists(),
        "the promote request file was not removed"
    );

    shutdown_tx.send(()).unwrap();
    join_within_deadline(watcher);
    assert!(events_rx.try_recv().is_err(), "an event was reported twice");
}

#[test]
fn the_watcher_ends_when_its_consumer_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(STANDBY_SIGNAL_FILE), b"").unwrap();
    let (_shutdown_tx, shutdown_rx) = bounded::<()>(1);
    let (seen_tx, seen_rx) = bounded(1);
    let watcher = spawn_trigger_watcher(TriggerConfig::new(tmp.path()), shutdown_rx, move |e| {
        let _ = seen_tx.try_send(e);
        false
    })
    .unwrap();
    request_promotion(&StdStorage, tmp.path()).unwrap();
    assert_eq!(
        seen_rx.recv_timeout(DEADLINE).expect("no event"),
        TriggerEvent::PromoteRequested
    );
    join_within_deadline(watcher);
}

#[test]
fn a_disconnected_shutdown_channel_stops_the_watcher() {
    let tmp = tempfile::tempdir().unwrap();
    let (shutdown_tx, shutdown_rx) = bounded::<()>(1);
    let (events_tx, _events_rx) = bounded(1);
    let watcher =
        spawn_trigger_watcher_with_sender(TriggerConfig::new(tmp.path()), shutdown_rx, events_tx)
            .unwrap();
    drop(shutdown_tx);
    join_within_deadline(watcher);
}
