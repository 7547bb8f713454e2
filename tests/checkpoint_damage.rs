//! Damage to what recovery starts from, with real processes: a damaged
//! control file or checkpoint chunk is found by its CRC, and the node
//! refuses to start with an error that names the file and the ways out,
//! and changes nothing in the data directory.

mod support;

use std::fs;
use std::path::Path;

use support::node::{init_datadir, walrep, TestNode};

/// Every file under `dir` with its bytes (the data directory as it is).
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "walrep.pid" {
                let b = fs::read(&p).unwrap();
                out.push((p.display().to_string(), b));
            }
        }
    }
    out.sort();
    out
}

/// A node with 500 keys written and checkpointed, then stopped.
fn written_and_stopped(parent: &Path) -> std::path::PathBuf {
    let datadir = init_datadir(parent, "node", &["--wal-segment-size", "1MB"]);
    let mut node = TestNode::start(&datadir, &[]);
    let mut c = node.client();
    for i in 0..500 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    node.stop();
    datadir
}

fn flip(path: &Path, at: usize) {
    let mut b = fs::read(path).unwrap();
    b[at] ^= 0x40;
    fs::write(path, b).unwrap();
}

fn refused(datadir: &Path) -> String {
    let dir = datadir.to_str().unwrap();
    let before = tree(datadir);
    let (ok, out, err) = walrep(&["start", dir, "-c", "port=0", "-c", "replication_port=0"]);
    assert!(!ok, "the node started:\n{out}{err}");
    assert_eq!(tree(datadir), before, "the refused start changed files");
    err
}

#[test]
fn a_damaged_control_file_is_refused_with_the_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = written_and_stopped(tmp.path());
    flip(&datadir.join("control"), 20);
    let err = refused(&datadir);
    assert!(err.contains("control file"), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        err.contains("walrep basebackup"),
        "the way out is named:\n{err}"
    );

    // A control file cut short (a torn copy) is refused the same way.
    let control = datadir.join("control");
    let b = fs::read(&control).unwrap();
    fs::write(&control, &b[..b.len() / 2]).unwrap();
    let err = refused(&datadir);
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn a_damaged_checkpoint_chunk_is_found_by_its_crc_and_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = written_and_stopped(tmp.path());
    let snapshot = fs::read_dir(datadir.join("base"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let chunk = fs::read_dir(&snapshot)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let len = fs::metadata(&chunk).unwrap().len() as usize;
    flip(&chunk, len / 2);
    let err = refused(&datadir);
    let name = chunk.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&name), "the chunk is named:\n{err}");
    assert!(err.contains("CRC") || err.contains("checksum"), "{err}");
    assert!(
        err.contains("walrep basebackup"),
        "the way out is named:\n{err}"
    );
}
