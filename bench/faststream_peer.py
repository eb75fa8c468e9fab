"""FastStream (Python) and the raw Python `redis` client doing the benchmark's jobs on the same
Redis Streams server, in the same modes as the eventbus bench (`redis_throughput`):

- publish one by one: each publish awaited before the next;
- publish in batches of 100: FastStream's `publish(..., pipeline=...)` (it has no batch publish
  for streams; its `publish_batch` writes lists), the raw client's pipelined `XADD`s;
- consume with a consumer group, acknowledging every message: FastStream's `StreamSub`
  subscriber (acks after the handler), the raw client's `XREADGROUP COUNT 128` + `XACK` loop.

Usage: python faststream_peer.py REDIS_URL EVENTS
Prints one `name=<events per second>` line per figure.
"""
import asyncio
import json
import sys
import time
import uuid

import redis.asyncio as aioredis
from faststream.redis import RedisBroker, StreamSub

URL = sys.argv[1]
EVENTS = int(sys.argv[2])
ONE_BY_ONE = max(EVENTS // 5, 1)
BATCH = 100


def payload(n: int) -> dict:
    return {"id": str(uuid.uuid4()), "type": "bench.tick", "source": "bench", "version": 1,
            "time": "2026-11-30T10:00:00.000Z",
            "data": {"n": n, "note": "order o-123 for customer c-42"}}


def stream_name(what: str) -> str:
    return f"peer-bench-{what}-{uuid.uuid4().hex}"


async def faststream_figures(out: dict) -> None:
    broker = RedisBroker(URL, logger=None)
    consume_stream = stream_name("faststream")
    done = asyncio.Event()
    count = 0

    @broker.subscriber(stream=StreamSub(consume_stream, group="bench", consumer="c1", last_id="0"))
    async def handle(msg: dict) -> None:
        nonlocal count
        count += 1
        if count == EVENTS:
            done.set()

    async with broker:
        one = stream_name("faststream-one")
        start = time.perf_counter()
        for n in range(ONE_BY_ONE):
            await broker.publish(payload(n), stream=one)
        out["faststream_publish_one_by_one"] = ONE_BY_ONE / (time.perf_counter() - start)

        start = time.perf_counter()
        for first in range(0, EVENTS, BATCH):
            async with broker._connection.pipeline() as pipe:
                for n in range(first, first + BATCH):
                    await broker.publish(payload(n), stream=consume_stream, pipeline=pipe)
                await pipe.execute()
        out["faststream_publish_batch"] = EVENTS / (time.perf_counter() - start)

        start = time.perf_counter()
        await broker.start()
        await asyncio.wait_for(done.wait(), timeout=300)
        out["faststream_consume_ack"] = EVENTS / (time.perf_counter() - start)
        await broker._connection.delete(one, consume_stream)


async def raw_figures(out: dict) -> None:
    client = aioredis.from_url(URL)
    one, batched = stream_name("raw-one"), stream_name("raw-batch")
    start = time.perf_counter()
    for n in range(ONE_BY_ONE):
        await client.xadd(one, {"type": "bench.tick", "payload": json.dumps(payload(n))})
    out["raw_publish_one_by_one"] = ONE_BY_ONE / (time.perf_counter() - start)

    start = time.perf_counter()
    for first in range(0, EVENTS, BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(first, first + BATCH):
            pipe.xadd(batched, {"type": "bench.tick", "payload": json.dumps(payload(n))})
        await pipe.execute()
    out["raw_publish_batch"] = EVENTS / (time.perf_counter() - start)

    await client.xgroup_create(batched, "raw", id="0")
    start = time.perf_counter()
    done = 0
    while done < EVENTS:
        reply = await client.xreadgroup("raw", "c1", {batched: ">"}, count=128, block=1000)
        ids = []
        for _, entries in reply:
            for entry_id, fields in entries:
                json.loads(fields[b"payload"])
                ids.append(entry_id)
        if ids:
            await client.xack(batched, "raw", *ids)
            done += len(ids)
    out["raw_consume_ack"] = EVENTS / (time.perf_counter() - start)
    await client.delete(one, batched)
    await client.aclose()


async def main() -> None:
    out: dict = {}
    await raw_figures(out)
    await faststream_figures(out)
    out["one_by_one_events"] = ONE_BY_ONE
    for name, value in out.items():
        print(f"{name}={value:.0f}")


asyncio.run(main())
