"""The client ports the pipeline depends on: what the source, the dead letters and the sink
call. An aiobotocore client satisfies each, and so does the lean request path in front of one
(`lean.py`), so the pipeline never knows which it was given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Unpack

if TYPE_CHECKING:
    from types_aiobotocore_kinesis.type_defs import (
        DescribeStreamSummaryInputTypeDef,
        DescribeStreamSummaryOutputTypeDef,
        PutRecordsInputTypeDef,
        PutRecordsOutputTypeDef,
    )
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestTypeDef,
        ChangeMessageVisibilityBatchResultTypeDef,
        DeleteMessageBatchRequestTypeDef,
        DeleteMessageBatchResultTypeDef,
        ReceiveMessageRequestTypeDef,
        ReceiveMessageResultTypeDef,
        SendMessageBatchRequestTypeDef,
        SendMessageBatchResultTypeDef,
    )


class SqsApi(Protocol):
    """What SqsSource calls: an aiobotocore SQS client, or `LeanSqs` in front of one."""

    async def receive_message(
        self, **kwargs: Unpack[ReceiveMessageRequestTypeDef]
    ) -> ReceiveMessageResultTypeDef: ...

    async def delete_message_batch(
        self, **kwargs: Unpack[DeleteMessageBatchRequestTypeDef]
    ) -> DeleteMessageBatchResultTypeDef: ...

    async def change_message_visibility_batch(
        self, **kwargs: Unpack[ChangeMessageVisibilityBatchRequestTypeDef]
    ) -> ChangeMessageVisibilityBatchResultTypeDef: ...


class DlqApi(Protocol):
    """What DeadLetterQueue calls: an aiobotocore SQS client, or `LeanDlq` in front of one."""

    async def send_message_batch(
        self, **kwargs: Unpack[SendMessageBatchRequestTypeDef]
    ) -> SendMessageBatchResultTypeDef: ...


class KinesisApi(Protocol):
    """What KinesisSink calls: an aiobotocore Kinesis client, or `LeanKinesis` in front of one."""

    async def put_records(
        self, **kwargs: Unpack[PutRecordsInputTypeDef]
    ) -> PutRecordsOutputTypeDef: ...

    async def describe_stream_summary(
        self, **kwargs: Unpack[DescribeStreamSummaryInputTypeDef]
    ) -> DescribeStreamSummaryOutputTypeDef: ...
