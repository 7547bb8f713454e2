#!/bin/bash
# usage: scripts/standby_fsyncs_per_commit.sh BIN LABEL MODE N
#   MODE: async (local with an async standby), remote_write or on (sync standby s1)
# A primary and one standby started by hand on free-ish ports; N SETs from
# one client; counts the standby's fdatasync/fsync syscalls with strace -c -f
# and its INFO receiver_fsyncs. Scratch data under /tmp/fp (removed after).
BIN=$1; LABEL=$2; MODE=$3; N=${4:-5000}
mkdir -p /tmp/fp; D=$(mktemp -d /tmp/fp/run.XXXX)
P=$((20000 + RANDOM % 10000)); RP=$((P+1)); SP=$((P+2)); SRP=$((P+3))
$BIN init $D/p >/dev/null 2>&1
SYNC=""
[ "$MODE" != async ] && SYNC="-c synchronous_standby_names=s1 -c synchronous_commit=$MODE"
$BIN start $D/p -c port=$P -c replication_port=$RP $SYNC > $D/p.log 2>&1 &
PPID_=$!
for i in $(seq 100); do redis-cli -p $P ping >/dev/null 2>&1 && break; sleep 0.1; done
$BIN basebackup --from 127.0.0.1:$RP -D $D/s --write-standby-config --application-name s1 >/dev/null 2>&1
$BIN start $D/s -c port=$SP -c replication_port=$SRP > $D/s.log 2>&1 &
SPID=$!
for i in $(seq 200); do redis-cli -p $SP info replication 2>/dev/null | grep -q "master_link_status:up" && break; sleep 0.1; done
LEVEL=local; [ "$MODE" != async ] && LEVEL=$MODE
redis-benchmark -p $P -c 1 -n 300 -t set -q >/dev/null 2>&1
strace -c -f -e trace=fdatasync,fsync -p $SPID -o $D/strace.txt &
STR=$!
sleep 0.5
PF0=$(redis-cli -p $P info persistence | grep wal_fsyncs: | tr -d '\r' | cut -d: -f2)
RF0=$(redis-cli -p $SP info replication | grep receiver_fsyncs: | tr -d '\r' | cut -d: -f2)
OUT=$(redis-benchmark -p $P -c 1 -n $N -t set -q --csv 2>/dev/null | tail -1)
PF1=$(redis-cli -p $P info persistence | grep wal_fsyncs: | tr -d '\r' | cut -d: -f2)
RF1=$(redis-cli -p $SP info replication | grep receiver_fsyncs: | tr -d '\r' | cut -d: -f2)
sleep 0.3
kill -INT $STR; wait $STR 2>/dev/null
FS=$(awk '/fdatasync|fsync/{s+=$4} END{print s+0}' $D/strace.txt)
DEF=$(redis-cli -p $SP info replication | grep receiver_flush_deferred: | tr -d '\r' | cut -d: -f2)
echo "$LABEL $MODE n=$N rps=$OUT primary_fsyncs=$((PF1-PF0)) standby_syscall_fsyncs=$FS standby_fsyncs_per_commit=$(echo "scale=3; $FS/$N" | bc) receiver_fsyncs=$((${RF1:-0}-${RF0:-0})) deferred=$DEF"
kill $SPID $PPID_; wait $SPID $PPID_ 2>/dev/null
rm -rf $D
