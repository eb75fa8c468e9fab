"""FastStream (Python) doing the benchmark's publish and consume on the same Redis Streams server.

Usage: python faststream_peer.py REDIS_URL EVENTS
Prints `publish_per_s=<n>` and `consume_per_s=<n>`: sequential awaited publishes of an envelope-sized
JSON message to a stream, then a consumer-group subscriber that acknowledges each message.
"""
import asyncio
import sys
import time
import uuid

from faststream import FastStream
from faststream.redis import RedisBroker, StreamSub

URL = sys.argv[1]
EVENTS = int(sys.argv[2])
STREAM = f"faststream-bench-{uuid.uuid4().hex}"


async def main() -> None:
    broker = RedisBroker(URL, logger=None)
    done = asyncio.Event()
    count = 0

    @broker.subscriber(stream=StreamSub(STREAM, group="bench", consumer="c1", last_id="0"))
    async def handle(msg: dict) -> None:
        nonlocal count
        count += 1
        if count == EVENTS:
            done.set()

    async with broker:
        payload = {"type": "bench.tick", "source": "bench", "version": 1,
                   "data": {"n": 0, "note": "order o-123 for customer c-42"}}
        start = time.perf_counter()
        for n in range(EVENTS):
            payload["data"]["n"] = n
            await broker.publish(payload, stream=STREAM)
        publish = EVENTS / (time.perf_counter() - start)
        start = time.perf_counter()
        await broker.start()
        await asyncio.wait_for(done.wait(), timeout=300)
        consume = EVENTS / (time.perf_counter() - start)
        await broker._connection.delete(STREAM)
    print(f"publish_per_s={publish:.0f}")
    print(f"consume_per_s={consume:.0f}")


asyncio.run(main())
