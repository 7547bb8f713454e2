//! The JSON of etcd's gateway: requests built, responses read.
//!
//! The gateway speaks proto3 JSON: `bytes` are standard base64, 64-bit
//! integers are strings in responses, and a field at its zero value is left
//! out altogether (a failed txn has no `succeeded`, a missing key no
//! `kvs`). So every reader here takes an absent field as zero, false or
//! empty, accepts an integer as a string or a number, and turns anything
//! else into a [`WireError`] — never a panic, whatever the bytes.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Why a response body could not be read; becomes
/// [`EtcdError::BadResponse`](super::EtcdError::BadResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) String);

type Wire<T> = Result<T, WireError>;

fn bad<T>(why: impl Into<String>) -> Wire<T> {
    Err(WireError(why.into()))
}

/// The `header` every response carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The store's revision when the request was served.
    pub revision: i64,
    /// The raft term of the member that answered.
    pub raft_term: u64,
    /// The member that answered.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
}

/// One key as etcd stores it (`mvccpb.KeyValue`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key's bytes.
    pub key: Vec<u8>,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// Revision of the key's creation (0: the key does not exist).
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
    /// How many times the key was written since its creation.
    pub version: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// What a range read returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The response's header (its `revision` is the store's).
    pub header: ResponseHeader,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// How many keys matched (more than `kvs` when a limit cut them).
    pub count: i64,
    /// Whether keys were left out by a limit.
    pub more: bool,
}

/// A lease etcd granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease's id (above 2^53: kept as an i64).
    pub id: i64,
    /// Its TTL in seconds, as granted (etcd may raise a short one).
    pub ttl_s: i64,
}

/// A lease's remaining time (`timetolive`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    /// Seconds left; -1 when the lease is gone.
    pub ttl_s: i64,
    /// The TTL the lease was granted (or last renewed) with.
    pub granted_ttl_s: i64,
    /// The keys attached to it (when asked for).
    pub keys: Vec<Vec<u8>>,
}

/// What a comparison of a txn looks at, with the operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (0 when absent).
    Version(i64),
    /// The key's create_revision (0 when absent: "does not exist").
    Create(i64),
    /// The key's mod_revision.
    Mod(i64),
    /// The key's value.
    Value(Vec<u8>),
    /// The key's lease.
    Lease(i64),
}

/// How a comparison compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    /// The key's field equals the operand.
    Equal,
    /// The key's field is greater than the operand.
    Greater,
    /// The key's field is less than the operand.
    Less,
    /// The key's field differs from the operand.
    NotEqual,
}

/// One comparison of a txn's guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// The field and operand.
    pub target: CompareTarget,
    /// The comparison.
    pub result: CompareResult,
}

impl Compare {
    /// `key` does not exist (create_revision == 0).
    pub fn absent(key: &[u8]) -> Compare {
        Compare::equal(key, CompareTarget::Create(0))
    }

    /// `key`'s field equals the operand.
    pub fn equal(key: &[u8], target: CompareTarget) -> Compare {
        Compare {
            key: key.to_vec(),
            target,
            result: CompareResult::Equal,
        }
    }
}

/// One operation of a txn branch (`RequestOp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read `key` (with `range_end`: the range [key, range_end)).
    Range {
        /// First key.
        key: Vec<u8>,
        /// End of the range, exclusive (empty: `key` alone).
        range_end: Vec<u8>,
    },
    /// Write `key` = `value`, attached to `lease` (0: none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none).
        lease: i64,
    },
    /// Delete `key` (with `range_end`: the range).
    Delete {
        /// First key.
        key: Vec<u8>,
        /// End of the range, exclusive (empty: `key` alone).
        range_end: Vec<u8>,
    },
    /// A nested txn.
    Txn(Txn),
}

impl TxnOp {
    /// Read one key.
    pub fn get(key: &[u8]) -> TxnOp {
        TxnOp::Range {
            key: key.to_vec(),
            range_end: Vec::new(),
        }
    }

    /// Write one key under `lease` (0: none).
    pub fn put(key: &[u8], value: &[u8], lease: i64) -> TxnOp {
        TxnOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
        }
    }

    /// Delete one key.
    pub fn delete(key: &[u8]) -> TxnOp {
        TxnOp::Delete {
            key: key.to_vec(),
            range_end: Vec::new(),
        }
    }
}

/// A transaction: if every comparison holds, `success` runs, else
/// `failure`, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The guard (all must hold).
    pub compare: Vec<Compare>,
    /// Run when the guard holds.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

/// What one operation of the branch that ran returned (`ResponseOp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// A range's keys.
    Range(RangeResponse),
    /// A put was applied.
    Put,
    /// How many keys a delete removed.
    Delete(i64),
    /// A nested txn's outcome.
    Txn(TxnResponse),
}

/// A txn's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// The response's header (its `revision` is the store's after the txn).
    pub header: ResponseHeader,
    /// Whether the guard held (the success branch ran).
    pub succeeded: bool,
    /// One response per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// An error body of the gateway: the gRPC code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrpcError {
    pub(crate) code: i64,
    pub(crate) message: String,
}

// ---- encoding ----

pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The end of the range of every key starting with `prefix`: the prefix
/// with its last byte plus one, carrying past trailing 0xff bytes; `\0`
/// (every key from `prefix` on) when the prefix is all 0xff or empty.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub(crate) fn range_request(key: &[u8], range_end: &[u8]) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), b64(key).into());
    if !range_end.is_empty() {
        m.insert("range_end".into(), b64(range_end).into());
    }
    Value::Object(m)
}

pub(crate) fn put_request(key: &[u8], value: &[u8], lease: i64) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), b64(key).into());
    m.insert("value".into(), b64(value).into());
    if lease != 0 {
        m.insert("lease".into(), lease.to_string().into());
    }
    Value::Object(m)
}

fn compare_json(c: &Compare) -> Value {
    let (target, field, operand): (&str, &str, Value) = match &c.target {
        CompareTarget::Version(v) => ("VERSION", "version", v.to_string().into()),
        CompareTarget::Create(v) => ("CREATE", "create_revision", v.to_string().into()),
        CompareTarget::Mod(v) => ("MOD", "mod_revision", v.to_string().into()),
        CompareTarget::Value(v) => ("VALUE", "value", b64(v).into()),
        CompareTarget::Lease(v) => ("LEASE", "lease", v.to_string().into()),
    };
    let result = match c.result {
        CompareResult::Equal => "EQUAL",
        CompareResult::Greater => "GREATER",
        CompareResult::Less => "LESS",
        CompareResult::NotEqual => "NOT_EQUAL",
    };
    json!({ "key": b64(&c.key), "target": target, "result": result, field: operand })
}

fn op_json(op: &TxnOp) -> Value {
    match op {
        TxnOp::Range { key, range_end } => {
            json!({ "request_range": range_request(key, range_end) })
        }
        TxnOp::Put { key, value, lease } => {
            json!({ "request_put": put_request(key, value, *lease) })
        }
        TxnOp::Delete { key, range_end } => {
            json!({ "request_delete_range": range_request(key, range_end) })
        }
        TxnOp::Txn(t) => json!({ "request_txn": txn_request(t) }),
    }
}

pub(crate) fn txn_request(t: &Txn) -> Value {
    json!({
        "compare": t.compare.iter().map(compare_json).collect::<Vec<_>>(),
        "success": t.success.iter().map(op_json).collect::<Vec<_>>(),
        "failure": t.failure.iter().map(op_json).collect::<Vec<_>>(),
    })
}

pub(crate) fn lease_id_request(id: i64) -> Value {
    json!({ "ID": id.to_string() })
}

// ---- decoding ----

/// Parse a body as one JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Wire<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => bad("not a JSON object"),
        Err(e) => bad(format!("not JSON: {e}")),
    }
}

/// The gateway's error body, unary (`{"error":"…","code":N}`) or stream
/// (`{"error":{"grpc_code":N,"message":"…"}}`); `None` when the object is
/// not an error.
pub(crate) fn grpc_error(m: &Map<String, Value>) -> Option<GrpcError> {
    let err = m.get("error")?;
    if let Value::Object(inner) = err {
        return Some(GrpcError {
            code: int(inner, "grpc_code").unwrap_or(2),
            message: text(inner, "message"),
        });
    }
    let message = match m.get("message").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => err.as_str().unwrap_or("").to_string(),
    };
    Some(GrpcError {
        code: int(m, "code").unwrap_or(2),
        message,
    })
}

fn text(m: &Map<String, Value>, field: &str) -> String {
    m.get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// An int64 field: absent is 0; a string or a number.
pub(crate) fn int(m: &Map<String, Value>, field: &str) -> Wire<i64> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .or_else(|_| bad(format!("{field}: not an integer: {s:.40}"))),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => Ok(v),
            None => bad(format!("{field}: not an int64: {n}")),
        },
        Some(_) => bad(format!("{field}: not an integer")),
    }
}

/// A uint64 field (ids in the header): absent is 0.
fn uint(m: &Map<String, Value>, field: &str) -> Wire<u64> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .or_else(|_| bad(format!("{field}: not an integer: {s:.40}"))),
        Some(Value::Number(n)) => n
            .as_u64()
            .map_or_else(|| bad(format!("{field}: not a uint64")), Ok),
        Some(_) => bad(format!("{field}: not an integer")),
    }
}

fn boolean(m: &Map<String, Value>, field: &str) -> Wire<bool> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => bad(format!("{field}: not a boolean")),
    }
}

fn bytes(m: &Map<String, Value>, field: &str) -> Wire<Vec<u8>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64
            .decode(s)
            .or_else(|e| bad(format!("{field}: not base64: {e}"))),
        Some(_) => bad(format!("{field}: not a base64 string")),
    }
}

fn object<'a>(m: &'a Map<String, Value>, field: &str) -> Wire<Option<&'a Map<String, Value>>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => bad(format!("{field}: not an object")),
    }
}

fn array<'a>(m: &'a Map<String, Value>, field: &str) -> Wire<&'a [Value]> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => bad(format!("{field}: not an array")),
    }
}

fn each_object<'a>(items: &'a [Value], what: &str) -> Wire<Vec<&'a Map<String, Value>>> {
    items
        .iter()
        .map(|v| match v {
            Value::Object(o) => Ok(o),
            _ => bad(format!("{what}: an item is not an object")),
        })
        .collect()
}

pub(crate) fn header(m: &Map<String, Value>) -> Wire<ResponseHeader> {
    let Some(h) = object(m, "header")? else {
        return Ok(ResponseHeader::default());
    };
    Ok(ResponseHeader {
        revision: int(h, "revision")?,
        raft_term: uint(h, "raft_term")?,
        member_id: uint(h, "member_id")?,
        cluster_id: uint(h, "cluster_id")?,
    })
}

fn key_value(m: &Map<String, Value>) -> Wire<KeyValue> {
    Ok(KeyValue {
        key: bytes(m, "key")?,
        value: bytes(m, "value")?,
        create_revision: int(m, "create_revision")?,
        mod_revision: int(m, "mod_revision")?,
        version: int(m, "version")?,
        lease: int(m, "lease")?,
    })
}

pub(crate) fn range_response(m: &Map<String, Value>) -> Wire<RangeResponse> {
    let kvs = each_object(array(m, "kvs")?, "kvs")?
        .into_iter()
        .map(key_value)
        .collect::<Wire<Vec<_>>>()?;
    Ok(RangeResponse {
        header: header(m)?,
        kvs,
        count: int(m, "count")?,
        more: boolean(m, "more")?,
    })
}

fn op_response(m: &Map<String, Value>) -> Wire<TxnOpResponse> {
    if let Some(r) = object(m, "response_range")? {
        return Ok(TxnOpResponse::Range(range_response(r)?));
    }
    if object(m, "response_put")?.is_some() {
        return Ok(TxnOpResponse::Put);
    }
    if let Some(d) = object(m, "response_delete_range")? {
        return Ok(TxnOpResponse::Delete(int(d, "deleted")?));
    }
    if let Some(t) = object(m, "response_txn")? {
        return Ok(TxnOpResponse::Txn(txn_response(t)?));
    }
    bad("a txn response op of no known kind")
}

pub(crate) fn txn_response(m: &Map<String, Value>) -> Wire<TxnResponse> {
    let responses = each_object(array(m, "responses")?, "responses")?
        .into_iter()
        .map(op_response)
        .collect::<Wire<Vec<_>>>()?;
    Ok(TxnResponse {
        header: header(m)?,
        succeeded: boolean(m, "succeeded")?,
        responses,
    })
}

pub(crate) fn deleted(m: &Map<String, Value>) -> Wire<i64> {
    int(m, "deleted")
}

pub(crate) fn lease_grant(m: &Map<String, Value>) -> Wire<Lease> {
    let lease = Lease {
        id: int(m, "ID")?,
        ttl_s: int(m, "TTL")?,
    };
    if lease.id == 0 {
        return bad("lease grant without an ID");
    }
    Ok(lease)
}

/// The TTL of a keepalive's result (0: the lease is gone); the stream
/// wraps each answer in `result`, and the error in `error`.
pub(crate) fn keepalive_result(m: &Map<String, Value>) -> Wire<i64> {
    match object(m, "result")? {
        Some(r) => int(r, "TTL"),
        None => bad("keepalive answer without a result"),
    }
}

pub(crate) fn time_to_live(m: &Map<String, Value>) -> Wire<LeaseTimeToLive> {
    let keys = array(m, "keys")?
        .iter()
        .map(|v| match v {
            Value::String(s) => B64
                .decode(s)
                .or_else(|e| bad(format!("keys: not base64: {e}"))),
            _ => bad("keys: not a string"),
        })
        .collect::<Wire<Vec<_>>>()?;
    Ok(LeaseTimeToLive {
        ttl_s: int(m, "TTL")?,
        granted_ttl_s: int(m, "grantedTTL")?,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obj(text: &str) -> Map<String, Value> {
        parse_object(text.as_bytes()).unwrap()
    }

    #[test]
    fn prefix_end_carries_past_0xff() {
        assert_eq!(prefix_range_end(b"/walrep/"), b"/walrep0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn absent_fields_read_as_zero() {
        let r = range_response(&obj(r#"{"header":{"revision":"7"}}"#)).unwrap();
        assert_eq!(r.header.revision, 7);
        assert!(r.kvs.is_empty());
        assert_eq!(r.count, 0);
        let t = txn_response(&obj(r#"{"header":{}}"#)).unwrap();
        assert!(!t.succeeded);
        assert_eq!(keepalive_result(&obj(r#"{"result":{"ID":"5"}}"#)), Ok(0));
    }

    #[test]
    fn key_values_decode_base64_and_string_ints() {
        let r = range_response(&obj(
            r#"{"kvs":[{"key":"Zm9v","value":"YmFy","create_revision":"2",
                "mod_revision":3,"version":"1","lease":"7587870044321544204"}],"count":"1"}"#,
        ))
        .unwrap();
        let kv = &r.kvs[0];
        assert_eq!(
            (kv.key.as_slice(), kv.value.as_slice()),
            (&b"foo"[..], &b"bar"[..])
        );
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 1));
        assert_eq!(kv.lease, 7587870044321544204);
    }

    #[test]
    fn nested_txn_responses_decode() {
        let t = txn_response(&obj(r#"{"succeeded":true,"responses":[{"response_put":{}},
               {"response_txn":{"responses":[{"response_delete_range":{"deleted":"1"}}]}}]}"#))
        .unwrap();
        assert!(t.succeeded);
        assert_eq!(t.responses[0], TxnOpResponse::Put);
        let TxnOpResponse::Txn(inner) = &t.responses[1] else {
            panic!("not a nested txn: {:?}", t.responses[1]);
        };
        assert!(!inner.succeeded);
        assert_eq!(inner.responses, vec![TxnOpResponse::Delete(1)]);
    }

    #[test]
    fn both_error_shapes_decode() {
        let unary =
            obj(r#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#);
        assert_eq!(
            grpc_error(&unary),
            Some(GrpcError {
                code: 14,
                message: "etcdserver: no leader".into()
            })
        );
        let stream = obj(
            r#"{"error":{"grpc_code":5,"http_code":404,"message":"etcdserver: requested lease not found"}}"#,
        );
        assert_eq!(grpc_error(&stream).map(|e| e.code), Some(5));
        assert_eq!(grpc_error(&obj(r#"{"header":{}}"#)), None);
    }

    #[test]
    fn compare_encodes_target_and_operand() {
        let v = txn_request(&Txn {
            compare: vec![Compare::absent(b"k")],
            success: vec![TxnOp::put(b"k", b"v", 42)],
            failure: vec![TxnOp::Txn(Txn::default())],
        });
        assert_eq!(v["compare"][0]["target"], "CREATE");
        assert_eq!(v["compare"][0]["create_revision"], "0");
        assert_eq!(v["success"][0]["request_put"]["lease"], "42");
        assert!(v["failure"][0]["request_txn"].is_object());
    }

    fn decode_all(body: &[u8]) {
        if let Ok(m) = parse_object(body) {
            let _ = grpc_error(&m);
            let _ = header(&m);
            let _ = range_response(&m);
            let _ = txn_response(&m);
            let _ = deleted(&m);
            let _ = lease_grant(&m);
            let _ = keepalive_result(&m);
            let _ = time_to_live(&m);
        }
    }

    /// JSON values of every shape, nested, with the field names the
    /// readers look for, so the garbage reaches deep into them.
    fn json_value() -> impl Strategy<Value = Value> {
        let names = prop::sample::select(vec![
            "header",
            "kvs",
            "key",
            "value",
            "lease",
            "count",
            "succeeded",
            "responses",
            "response_txn",
            "response_range",
            "response_put",
            "response_delete_range",
            "deleted",
            "ID",
            "TTL",
            "result",
            "error",
            "code",
            "message",
            "keys",
            "revision",
            "grpc_code",
            "mod_revision",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::from),
            any::<i64>().prop_map(|i| Value::from(i.to_string())),
        ];
        leaf.prop_recursive(4, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((names.clone(), inner), 0..6).prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn garbage_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            decode_all(&body);
        }

        #[test]
        fn garbage_json_never_panics(v in json_value()) {
            decode_all(&serde_json::to_vec(&v).unwrap());
        }
    }
}
