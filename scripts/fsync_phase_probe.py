#!/usr/bin/env python3
"""A: pwrite 80 B + fdatasync per loop. B, another process, does its own
pwrite + fdatasync when A signals: mode 'after' = after A's fdatasync ended
(a primary and an async standby fed after each flush), mode 'before' = just
before A starts its fdatasync (a sync standby sent WAL early), mode 'both'
= A also waits for B's fdatasync (a commit at `on`). Prints A's loops/s."""
import os, sys, time, tempfile
secs = float(sys.argv[1]) if len(sys.argv) > 1 else 3
d = tempfile.mkdtemp(dir='/tmp')
def mk(n):
    fd = os.open(os.path.join(d, n), os.O_RDWR | os.O_CREAT)
    os.write(fd, b'\0' * (16 << 20)); os.fsync(fd); return fd
fa, fb = mk('a'), mk('b')
def child():
    r1, w1 = os.pipe(); r2, w2 = os.pipe()
    if os.fork() == 0:
        os.close(w1); os.close(r2); off = 0
        while True:
            if not os.read(r1, 1): os._exit(0)
            os.pwrite(fb, b'y' * 80, off); os.fdatasync(fb); off = (off + 80) % (16 << 20)
            os.write(w2, b'.')
    os.close(r1); os.close(w2)
    return w1, r2
def run(mode):
    w = r = None
    if mode != 'alone': w, r = child()
    n = 0; off = 0; end = time.monotonic() + secs; pending = 0
    while time.monotonic() < end:
        os.pwrite(fa, b'x' * 80, off); off = (off + 80) % (16 << 20)
        if mode in ('before', 'both'): os.write(w, b'.'); pending += 1
        os.fdatasync(fa)
        if mode == 'after': os.write(w, b'.'); pending += 1
        if mode == 'both': os.read(r, 1); pending -= 1
        elif r is not None:
            # drain B's completions without waiting
            import select
            while select.select([r], [], [], 0)[0]: pending -= len(os.read(r, 4096))
        n += 1
    if w is not None: os.close(w); os.wait()
    return n / secs
for m in ['alone', 'after', 'before', 'both', 'alone']:
    print(f"{m:7s} {run(m):7.0f}/s")
