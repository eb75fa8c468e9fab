"""Publishes events into eventbus's transports from Python, exactly as the README's
"Producing from other languages" section says, with no eventbus code and no catalog entry.

    produce.py redis URL PREFIX TOPIC COUNT
    produce.py kafka BOOTSTRAP TOPIC COUNT

Prints one line per event: `sent <id> <key>`.
"""

import json
import sys
import uuid
from datetime import datetime, timezone


def envelope(n, topic):
    """A CloudEvents 1.0 JSON envelope; every other event uses the `eventId`/`eventType`/`timestamp` member names."""
    event_id = str(uuid.uuid4())
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    data = {"order_id": f"py-{n}", "n": n, "lang": "python"}
    if n % 2 == 0:
        doc = {
            "specversion": "1.0",
            "id": event_id,
            "source": "python-producer",
            "type": topic,
            "time": now,
            "datacontenttype": "application/json",
            "version": 1,
            "data": data,
        }
    else:
        doc = {
            "eventId": event_id,
            "eventType": topic,
            "timestamp": now,
            "source": "python-producer",
            "version": "1.0",
            "data": data,
        }
    return event_id, f"py-{n}", json.dumps(doc).encode()


def redis_produce(url, prefix, topic, count):
    import redis

    client = redis.Redis.from_url(url)
    # One partition (the default): the topic's stream is `{prefix}:events:{topic}`.
    stream = f"{prefix}:events:{topic}"
    # Registering the stream makes wildcard subscribers discover it.
    client.sadd(f"{prefix}:streams", f"{stream}\x1f{topic}")
    for n in range(count):
        event_id, key, payload = envelope(n, topic)
        client.xadd(
            stream,
            {"topic": topic, "type": topic, "key": key, "payload": payload},
        )
        print(f"sent {event_id} {key}", flush=True)


def kafka_produce(bootstrap, topic, count):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 20000})
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(error)

    for n in range(count):
        event_id, key, payload = envelope(n, topic)
        producer.produce(
            topic,
            key=key.encode(),
            value=payload,
            headers=[
                ("type", topic.encode()),
                ("content-type", b"application/cloudevents+json"),
            ],
            on_delivery=delivered,
        )
        print(f"sent {event_id} {key}", flush=True)
    producer.flush(30)
    if failures:
        sys.exit(f"delivery failed: {failures}")


def main():
    mode = sys.argv[1]
    if mode == "redis":
        redis_produce(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif mode == "kafka":
        kafka_produce(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
