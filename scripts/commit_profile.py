#!/usr/bin/env python3
"""Per-commit thread wake-ups and CPU of a primary (and its synchronous
standby) under one redis-benchmark client.

    commit_profile.py EXE LEVEL N [--no-standby] [--keep DIR] [--perf FILE]

Starts `EXE init` + `EXE start` (a primary naming `standby1` in
synchronous_standby_names, at synchronous_commit=LEVEL), a standby made by
`EXE basebackup` unless --no-standby, waits until it is `sync`, runs
`redis-benchmark -c 1 -n N -t set`, and prints per thread (grouped by
name, digits dropped) the voluntary and involuntary context switches and
the CPU time per commit, from /proc/PID/task/*/status and schedstat read
before and after the run. Everything lives in a temporary directory that is
removed at the end (or kept in --keep DIR). --perf FILE records the
primary's sleeps during the run (`perf record -e sched:sched_switch -g`);
read them with `perf report -i FILE --no-children --sort comm,sym`.
"""
import os, re, shutil, signal, socket, subprocess, sys, tempfile, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(exe, d, overrides):
    port, repl = free_port(), free_port()
    args = [exe, "start", d, "-c", "log_level=warn"]
    for o in overrides + [f"port={port}", f"replication_port={repl}"]:
        args += ["-c", o]
    log = open(d + ".log", "ab")
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        r = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        if r.stdout.strip() == "PONG":
            return p, port, repl
        if p.poll() is not None:
            sys.exit(f"{exe} start {d} exited; see {d}.log")
        time.sleep(0.05)
    sys.exit(f"{exe} start {d}: no PONG within 60 s")


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def wait_sync(port):
    deadline = time.time() + 60
    while time.time() < deadline:
        r = subprocess.run(["redis-cli", "-p", str(port), "info", "replication"], capture_output=True, text=True)
        if "sync_state=sync" in r.stdout and "state=streaming" in r.stdout:
            return
        time.sleep(0.05)
    sys.exit("the standby never became sync")


def snapshot(pid):
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            st = open(f"{base}/{tid}/status").read()
            ns = int(open(f"{base}/{tid}/schedstat").read().split()[0])
        except OSError:
            continue
        name = re.search(r"^Name:\s*(.*)$", st, re.M).group(1)
        vol = int(re.search(r"^voluntary_ctxt_switches:\s*(\d+)", st, re.M).group(1))
        inv = int(re.search(r"^nonvoluntary_ctxt_switches:\s*(\d+)", st, re.M).group(1))
        out[tid] = (re.sub(r"\d+", "", name).rstrip("-"), vol, inv, ns)
    return out


def diff(before, after, n):
    rows = {}
    for tid, (name, vol, inv, ns) in after.items():
        b = before.get(tid, (name, 0, 0, 0))
        r = rows.setdefault(name, [0, 0, 0])
        r[0] += vol - b[1]
        r[1] += inv - b[2]
        r[2] += ns - b[3]
    return {k: (v[0] / n, v[1] / n, v[2] / n / 1000) for k, v in rows.items() if v[0] or v[2] > n * 500}


def main():
    args = sys.argv[1:]
    no_standby = "--no-standby" in args
    keep = perf = None
    if "--perf" in args:
        perf = args[args.index("--perf") + 1]
        args.remove("--perf")
        args.remove(perf)
    if "--keep" in args:
        keep = args[args.index("--keep") + 1]
        args.remove("--keep")
        args.remove(keep)
    args = [a for a in args if a != "--no-standby"]
    exe, level, n = os.path.abspath(args[0]), args[1], int(args[2])
    tmp = keep or tempfile.mkdtemp(prefix="commitprof-")
    pdir, sdir = f"{tmp}/primary", f"{tmp}/standby"
    procs = []
    try:
        if not os.path.exists(pdir):
            subprocess.run([exe, "init", pdir], check=True, stdout=subprocess.DEVNULL)
        prim, port, repl = start(exe, pdir, [f"synchronous_commit={level}", "synchronous_standby_names=standby1"])
        procs.append(prim)
        pids = [("primary", prim.pid)]
        if not no_standby:
            if not os.path.exists(sdir):
                subprocess.run([exe, "basebackup", "--from", f"127.0.0.1:{repl}", "-D", sdir, "-R",
                                "-U", "walrep", "--application-name", "standby1"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sb, _, _ = start(exe, sdir, [f"primary_conninfo=host=127.0.0.1 port={repl} user=walrep application_name=standby1",
                                         "wal_retrieve_retry_interval=100ms"])
            procs.append(sb)
            pids.append(("standby", sb.pid))
            wait_sync(port)
        # Warm up (segment pre-allocation, first flushes).
        subprocess.run(["redis-benchmark", "-p", str(port), "-c", "1", "-n", "500", "-t", "set", "-q"],
                       capture_output=True)
        rec = None
        if perf:
            rec = subprocess.Popen(["perf", "record", "-q", "-e", "sched:sched_switch", "-g", "-o", perf,
                                    "-p", str(prim.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        before = {w: snapshot(pid) for w, pid in pids}
        t0 = time.time()
        r = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "1", "-n", str(n), "-t", "set", "-q"],
                           capture_output=True, text=True)
        secs = time.time() - t0
        after = {w: snapshot(pid) for w, pid in pids}
        if rec:
            rec.send_signal(signal.SIGINT)
            rec.wait(30)
        m = re.search(r"([\d.]+) requests per second", r.stdout)
        rps = float(m.group(1)) if m else n / secs
        load = open("/proc/loadavg").read().split()[0]
        print(f"{os.path.basename(exe)} level={level} standby={'no' if no_standby else 'yes'} "
              f"n={n}: {rps:.0f} commits/s (load {load})")
        print(f"  {'process/thread':34} {'vol/commit':>10} {'invol/commit':>12} {'CPU us/commit':>13}")
        for w, _ in pids:
            rows = diff(before[w], after[w], n)
            tv = ti = tc = 0.0
            for name, (v, i, c) in sorted(rows.items(), key=lambda kv: -kv[1][2]):
                print(f"  {w + ' ' + name:34} {v:10.2f} {i:12.2f} {c:13.1f}")
                tv, ti, tc = tv + v, ti + i, tc + c
            print(f"  {w + ' total':34} {tv:10.2f} {ti:12.2f} {tc:13.1f}")
    finally:
        for p in reversed(procs):
            stop(p)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
