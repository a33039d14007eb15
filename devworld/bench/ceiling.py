"""Ceiling reference: a raw async copy, no validation, no ordering guarantees.

Many concurrent receivers; each received batch becomes one PutRecords and one delete.
It is the practical limit of the world, reported but not competed with on its terms.
Run as `python -m devworld.bench.ceiling QUEUE_URL STREAM_NAME` with AWS_ENDPOINT_URL set.
"""

from __future__ import annotations

import asyncio
import base64
import sys

import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

RECEIVERS = 32


async def worker(sqs: object, kinesis: object, queue_url: str, stream_name: str) -> None:
    while True:
        messages = (
            await sqs.receive_message(  # type: ignore[attr-defined]
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
        ).get("Messages", [])
        if not messages:
            return
        records: list[dict[str, object]] = []
        for message in messages:
            try:
                doc = orjson.loads(base64.b64decode(message["Body"]))
                key = str(doc["device_id"])
                records.extend(
                    {"Data": orjson.dumps(e), "PartitionKey": key}
                    for items in doc["events"].values()
                    for e in items
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        for start in range(0, len(records), 500):
            await kinesis.put_records(StreamName=stream_name, Records=records[start : start + 500])  # type: ignore[attr-defined]
        await sqs.delete_message_batch(  # type: ignore[attr-defined]
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )


async def main(queue_url: str, stream_name: str) -> int:
    session = get_session()
    config = AioConfig(max_pool_connections=RECEIVERS * 2)
    async with (
        session.create_client("sqs", config=config) as sqs,
        session.create_client("kinesis", config=config) as kinesis,
    ):
        await asyncio.gather(
            *(worker(sqs, kinesis, queue_url, stream_name) for _ in range(RECEIVERS))
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1], sys.argv[2])))
