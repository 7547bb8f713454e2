"""What an application does with redis-py (the most used Redis client)
against a walrep primary, read back from its standby, in RESP2 and RESP3.

Run by tests/redis_py.rs as: python redis_py.py PRIMARY_PORT STANDBY_PORT.
Every check raises (exit status 1) on a difference.
"""
import sys
import time

import redis


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run(primary_port, standby_port, protocol):
    r = redis.Redis(port=primary_port, protocol=protocol, decode_responses=True)
    s = redis.Redis(port=standby_port, protocol=protocol, decode_responses=True)
    p = f"p{protocol}:"

    # The default pipeline is MULTI/EXEC.
    res = r.pipeline().set(p + "a", 1).incr(p + "a").get(p + "a").execute()
    assert res == [True, 2, "2"], res
    # Optimistic locking with WATCH.
    with r.pipeline() as pipe:
        pipe.watch(p + "a")
        v = int(pipe.get(p + "a"))
        pipe.multi()
        pipe.set(p + "a", v + 1)
        assert pipe.execute() == [True]
    assert r.get(p + "a") == "3"

    # Expiry.
    assert r.set(p + "ex", "v", ex=100) is True
    assert 99 <= r.ttl(p + "ex") <= 100, r.ttl(p + "ex")
    assert r.expire(p + "a", 50) is True
    assert r.ttl(p + "a") in (49, 50)
    assert r.setex(p + "setex", 100, "v") is True
    assert r.persist(p + "setex") is True and r.ttl(p + "setex") == -1

    # Hashes, lists, sets.
    assert r.hset(p + "h", mapping={"f1": "v1", "f2": "v2"}) == 2
    assert r.hincrby(p + "h", "n", 5) == 5
    assert r.hgetall(p + "h") == {"f1": "v1", "f2": "v2", "n": "5"}
    assert r.rpush(p + "l", "a", "b", "c") == 3
    assert r.lpop(p + "l") == "a"
    assert r.lrange(p + "l", 0, -1) == ["b", "c"]
    assert r.sadd(p + "s", "x", "y", "z") == 3
    assert r.srem(p + "s", "z") == 1
    assert r.smembers(p + "s") == {"x", "y"}
    assert r.sismember(p + "s", "x")
    try:
        r.lpush(p + "h", "x")
        raise AssertionError("LPUSH on a hash succeeded")
    except redis.exceptions.ResponseError as e:
        assert str(e).startswith("WRONGTYPE"), e

    keys = {p + k for k in ["a", "ex", "setex", "h", "l", "s"]}
    assert set(r.scan_iter(match=p + "*", count=2)) == keys

    # The standby has it all once it has the last write.
    r.set(p + "last", "1")
    keys.add(p + "last")
    wait_for("the standby to catch up", lambda: s.get(p + "last") == "1")
    assert s.get(p + "a") == "3"
    assert 98 <= s.ttl(p + "ex") <= 100
    assert s.hgetall(p + "h") == {"f1": "v1", "f2": "v2", "n": "5"}
    assert s.lrange(p + "l", 0, -1) == ["b", "c"]
    assert s.smembers(p + "s") == {"x", "y"}
    assert set(s.scan_iter(match=p + "*")) == keys
    try:
        s.set(p + "a", 0)
        raise AssertionError("a write on the standby succeeded")
    except redis.exceptions.ReadOnlyError:
        pass
    info = r.execute_command("HELLO", protocol)
    if isinstance(info, list):  # RESP2: field, value, ...
        info = dict(zip(info[::2], info[1::2]))
    assert info["proto"] == protocol, info


def main():
    primary_port, standby_port = int(sys.argv[1]), int(sys.argv[2])
    run(primary_port, standby_port, 2)
    run(primary_port, standby_port, 3)
    r = redis.Redis(port=primary_port, protocol=3)
    assert r.flushdb() is True
    assert r.dbsize() == 0
    s = redis.Redis(port=standby_port)
    wait_for("the standby to see FLUSHDB", lambda: s.dbsize() == 0)
    print(f"redis-py {redis.__version__}: ok")


main()
