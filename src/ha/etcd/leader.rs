//! The leader key's three writes, as Patroni makes them on etcd v3: take
//! it if nobody holds it, keep it on our lease, give it up only if it is
//! still ours. Each is one txn, so a lost race is an answer (`false`, with
//! the owner when known), never an overwrite of someone else's key.

use super::{Compare, CompareTarget, EtcdClient, EtcdError, Txn, TxnOp, TxnOpResponse};

/// What an attempt to take or keep the leader key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderWrite {
    /// The key is ours, on our lease.
    Held,
    /// Someone else holds it (their name, when the key could be read).
    Lost {
        /// The value of the key now, when it exists.
        owner: Option<Vec<u8>>,
    },
}

impl LeaderWrite {
    /// Whether the key is ours.
    pub fn held(&self) -> bool {
        matches!(self, LeaderWrite::Held)
    }
}

/// The value of the key read in a branch that ran (a range op), if any.
fn owner_in(responses: &[TxnOpResponse]) -> Option<Vec<u8>> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Range(range) => range.kvs.first().map(|kv| kv.value.clone()),
        TxnOpResponse::Txn(inner) => owner_in(&inner.responses),
        _ => None,
    })
}

/// Take `key` for `name` under `lease` if nobody holds it
/// (CREATE == 0); the failure branch reads the owner in the same round
/// trip.
pub fn acquire(
    client: &EtcdClient,
    key: &[u8],
    name: &[u8],
    lease: i64,
) -> Result<LeaderWrite, EtcdError> {
    let txn = Txn {
        compare: vec![Compare::absent(key)],
        success: vec![TxnOp::put(key, name, lease)],
        failure: vec![TxnOp::get(key)],
    };
    let r = client.txn(&txn)?;
    if r.succeeded {
        return Ok(LeaderWrite::Held);
    }
    Ok(LeaderWrite::Lost {
        owner: owner_in(&r.responses),
    })
}

/// Keep `key` for `name` on `lease`: nothing is written when the key
/// already names us on this lease; when it names us on another (older)
/// lease it is put again on this one (VALUE == name); when it is gone it is
/// taken again (CREATE == 0). Never overwrites another owner's key.
pub fn update(
    client: &EtcdClient,
    key: &[u8],
    name: &[u8],
    lease: i64,
) -> Result<LeaderWrite, EtcdError> {
    let recreate = Txn {
        compare: vec![Compare::absent(key)],
        success: vec![TxnOp::put(key, name, lease)],
        failure: vec![TxnOp::get(key)],
    };
    let reattach = Txn {
        compare: vec![Compare::equal(key, CompareTarget::Value(name.to_vec()))],
        success: vec![TxnOp::put(key, name, lease)],
        failure: vec![TxnOp::Txn(recreate)],
    };
    let txn = Txn {
        compare: vec![
            Compare::equal(key, CompareTarget::Value(name.to_vec())),
            Compare::equal(key, CompareTarget::Lease(lease)),
        ],
        success: vec![],
        failure: vec![TxnOp::Txn(reattach)],
    };
    let r = client.txn(&txn)?;
    if r.succeeded || nested_succeeded(&r.responses) {
        return Ok(LeaderWrite::Held);
    }
    Ok(LeaderWrite::Lost {
        owner: owner_in(&r.responses),
    })
}

/// Whether a nested txn chain ended in a success branch (a put ran).
fn nested_succeeded(responses: &[TxnOpResponse]) -> bool {
    responses.iter().any(|r| match r {
        TxnOpResponse::Txn(inner) => inner.succeeded || nested_succeeded(&inner.responses),
        _ => false,
    })
}

/// Give `key` up if it still names `name` (VALUE == name, then delete);
/// `false` when it was not ours (nothing deleted).
pub fn release(client: &EtcdClient, key: &[u8], name: &[u8]) -> Result<bool, EtcdError> {
    let txn = Txn {
        compare: vec![Compare::equal(key, CompareTarget::Value(name.to_vec()))],
        success: vec![TxnOp::delete(key)],
        failure: vec![],
    };
    Ok(client.txn(&txn)?.succeeded)
}
