"""Turns the outputs of scripts/bench into docs/benchmarks.md."""
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys

out, redis_version, faststream_version = sys.argv[1], sys.argv[2], sys.argv[3]


def read(name):
    path = os.path.join(out, f"{name}.txt")
    return open(path).read() if os.path.exists(path) else ""


def criterion(text):
    """bench id -> {"time": median, "thrpt": median}."""
    rows = {}
    current = None
    # Progress lines ("Benchmarking <id>: Warming up ...") end in carriage returns.
    for line in re.split(r"[\r\n]+", text):
        progress = re.match(r"Benchmarking (\S+?):", line)
        if progress:
            current = progress.group(1)
            continue
        if line and not line[0].isspace():
            token = line.split()[0]
            if "/" in token:
                current = token
        m = re.search(r"(time|thrpt):\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if m and current and m.group(1) not in rows.get(current, {}):
            rows.setdefault(current, {})[m.group(1)] = f"{m.group(2)} {m.group(3)}"
    return rows


def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def mem_gib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        return 0
    return 0


rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
print("# Benchmarks\n")
print(f"Produced by `bash scripts/bench` on {datetime.date.today()}: every figure below comes from one")
print("run, each framework path beside its raw-client baseline on the same server.\n")
print(f"Machine: {os.cpu_count()} cores ({cpu()}), {mem_gib():.0f} GiB, {platform.system()} {platform.release()};")
print(f"{rustc}; Redis {redis_version} on loopback (AOF on, appendfsync everysec); FastStream {faststream_version}.\n")

mem = criterion(read("memory"))
if mem:
    print("## In-memory backend: publish → handle\n")
    print("| bench | throughput (median) |")
    print("|---|---|")
    for k, v in mem.items():
        print(f"| `{k}` | {v.get('thrpt', v.get('time', '?'))} |")
    print()

    def per_second(bench_id):
        """A criterion throughput median in events per second, if the bench ran."""
        value = mem.get(f"memory_publish_handle/{bench_id}", {}).get("thrpt", "")
        m = re.match(r"([\d.]+) (\w)?elem/s", value)
        if not m:
            return None
        return float(m.group(1)) * {"K": 1e3, "M": 1e6, "G": 1e9}.get(m.group(2) or "", 1)

    bus_1, bus_8 = per_second("bus_concurrency_1"), per_second("bus_concurrency_8")
    bus_one = per_second("bus_one_by_one_concurrency_1")
    one_by_one, batch = per_second("raw_channel_baseline"), per_second("raw_channel_batch_baseline")
    if bus_1 and bus_8 and bus_one and one_by_one and batch:
        print("`publish_batch` encodes every envelope of the batch before the backend takes any (an")
        print("envelope that fails to encode stops the batch with nothing published), so the consumer")
        print("starts when encoding ends. The raw channel sent one by one overlaps the two on two cores;")
        print("the raw batch baseline works in `publish_batch`'s mode. Like for like:\n")
        print("| mode | bus | raw channel | bus / raw |")
        print("|---|---|---|---|")
        print(f"| batch: `publish_batch`, concurrency 1 / 8 | {bus_1 / 1e3:.0f} k / {bus_8 / 1e3:.0f} k | {batch / 1e3:.0f} k | {bus_1 / batch:.2f} / {bus_8 / batch:.2f} |")
        print(f"| one by one: `publish_envelope` awaited each, concurrency 1 | {bus_one / 1e3:.0f} k | {one_by_one / 1e3:.0f} k | {bus_one / one_by_one:.2f} |")
        print(f"| `publish_batch` against the raw channel sent one by one | {bus_1 / 1e3:.0f} k | {one_by_one / 1e3:.0f} k | {bus_1 / one_by_one:.2f} |")
        bus_kept = per_second("bus_concurrency_1_retention_100000")
        if bus_kept:
            print(f"| batch, concurrency 1, the backend keeping 100 000 messages a topic (`MemoryBackend::with_retention`) instead of the default 10 000 | {bus_kept / 1e3:.0f} k | {batch / 1e3:.0f} k | {bus_kept / batch:.2f} |")
        print()
    counted = dict(re.findall(r"(\w+)=(\d+)", read("memory_instructions")))
    if "bus" in counted and "raw" in counted:
        events = 30_000
        bus, raw = int(counted["bus"]) / events, int(counted["raw"]) / events
        print("Instructions per event, counted by valgrind's cachegrind on one thread (publisher and")
        print("consumer taking turns, 30 000 events, setup included): a figure the machine's load does")
        print("not move, unlike the throughput above.\n")
        print("| path | instructions per event |")
        print("|---|---|")
        print(f"| bus, concurrency 1 | {bus:,.0f} |")
        if "bus_one_by_one" in counted:
            print(f"| bus, published one by one | {int(counted['bus_one_by_one']) / events:,.0f} |")
        print(f"| raw channel (same envelope) | {raw:,.0f} |")
        if "raw_batch" in counted:
            raw_batch = int(counted["raw_batch"]) / events
            print(f"| raw channel, batch mode | {raw_batch:,.0f} |")
        print(f"| raw / bus | {raw / bus:.2f} |")
        print()

pat = criterion(read("pattern"))
if pat:
    print("## Pattern matching (per 64 names)\n")
    print("| bench | time (median) | throughput |")
    print("|---|---|---|")
    for k, v in pat.items():
        print(f"| `{k}` | {v.get('time', '?')} | {v.get('thrpt', '')} |")
    print()

def kafka_instructions():
    """The Kafka consume paths in instructions per record (scripts/bench's cachegrind runs)."""
    runs = {}
    for k, v in re.findall(r"(\w+)=(\d+)", read("kafka_instructions")):
        runs.setdefault(k, []).append(int(v))
    if not all(k in runs for k in ("none", "raw", "pipeline1")):
        return
    records = 20_000
    counted = {k: statistics.median(v) for k, v in runs.items()}
    per = {k: (v - counted["none"]) / records for k, v in counted.items() if k != "none"}
    print("Instructions per record consumed, counted by valgrind's cachegrind (20 000 records on the")
    print("in-process mock cluster, each consumer alone, the median of three runs; the median run that")
    print("only publishes is subtracted, so the group join and the broker's side are included): a")
    print("figure the machine's load does not move, unlike the throughput above.\n")
    print("| consumer | instructions per record | raw / this |")
    print("|---|---|---|")
    names = [("raw", "raw StreamConsumer + commit loop"), ("backend", "backend stream + ack (no pipeline)"), ("pipeline1", "full pipeline, concurrency 1")]
    for key, label in names:
        if key in per:
            print(f"| {label} | {per[key]:,.0f} | {per['raw'] / per[key]:.2f} |")
    print()


for name, title in [("redis", "Redis Streams"), ("redis_partitions", "Redis partitions: one member against two"), ("kafka", "Kafka"), ("outbox", "Outbox relay")]:
    text = read(name)
    # The bench's own output starts after cargo's `Running benches/...` line.
    running = [i for i, l in enumerate(text.splitlines()) if re.match(r"^\s*Running ", l)]
    body = text.splitlines()[running[-1] + 1:] if running else text.splitlines()
    lines = [l for l in body if l.strip()]
    if lines:
        print(f"## {title}\n")
        print("```text")
        print("\n".join(lines[-30:]))
        print("```\n")
    if name == "kafka":
        kafka_instructions()

fs = dict(re.findall(r"(\w+)=(\d+)", read("faststream")))
redis = read("redis")


def ours(pattern):
    m = re.search(pattern, redis)
    return m.group(1) if m else "?"


if fs:
    print("## Peers on the same Redis: FastStream (Python) and the raw clients\n")
    print("Each row is one job done the same way by each; the raw clients are the floor of their")
    print(f"language. One-by-one rows publish {fs.get('one_by_one_events', '?')} events, the others")
    print("the bench's full count. FastStream has no inbox: its consume row compares with")
    print("eventbus's pipeline over the in-process inbox; the Redis inbox row adds dedupe across")
    print("processes (a `SET NX EX` per event and an `MGET` per read: see the commands per event above).\n")
    rows = [
        ("publish, one by one (awaited)", "publish_one_by_one",
         ours(r"\(b1\) bus.publish, one by one\s+(\d+)"), ours(r"\(a1\) raw XADD, one by one\s+(\d+)")),
        ("publish, batches of 100 (pipelined)", "publish_batch",
         ours(r"\(b\) bus publish_batch\s+(\d+)"), ours(r"\(a\) raw pipelined XADD\s+(\d+)")),
        ("consume with a consumer group, ack each", "consume_ack",
         ours(r"\(d'\) pipeline, in-process inbox, c64\s*(\d+)") + " (concurrency 64)",
         ours(r"\(c\) raw XREADGROUP\+XACK loop\s+(\d+)")),
    ]
    print("| job | FastStream | raw Python `redis` | eventbus | raw Rust `redis` |")
    print("|---|---|---|---|---|")
    for job, key, eventbus, raw_rust in rows:
        print(f"| {job} | {fs.get('faststream_' + key, '?')} | {fs.get('raw_' + key, '?')} | {eventbus} | {raw_rust} |")
    with_inbox = ours(r"\(d\) pipeline\+inbox, concurrency 64\s*(\d+)")
    raw_inbox = ours(r"\(c'\) raw loop \+ inbox SMISMEMBER/SADD\s*(\d+)")
    print(f"| same, with the Redis inbox | | | {with_inbox} (concurrency 64) | {raw_inbox} (hand-rolled inbox, batched per read) |")
    print()

notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
if os.path.exists(notes):
    print()
    print(open(notes).read().rstrip())
