"""Naive reference: what most hand-written consumers do, one step after another.

Receive 10, one PutRecord per event, delete the batch; repeat until the queue is empty.
Run as `python -m devworld.bench.naive QUEUE_URL STREAM_NAME` with AWS_ENDPOINT_URL set.
"""

from __future__ import annotations

import base64
import json
import sys

import boto3


def main(queue_url: str, stream_name: str) -> int:
    session = boto3.session.Session()
    sqs = session.client("sqs")
    kinesis = session.client("kinesis")
    while True:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        if not messages:
            return 0
        for message in messages:
            try:
                doc = json.loads(base64.b64decode(message["Body"]))
                events = [e for items in doc["events"].values() for e in items]
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            for event in events:
                kinesis.put_record(
                    StreamName=stream_name,
                    Data=json.dumps(event).encode(),
                    PartitionKey=str(doc.get("device_id", "x")),
                )
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
