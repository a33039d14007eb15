"""A lean request path for the three hot calls: ReceiveMessage, DeleteMessageBatch, PutRecords.

botocore spends most of a call walking its shape model, value by value, to serialize the
request and parse the response, and emitting a dozen events around it: 4.7 ms of CPU for a
PutRecords of 500 records, 1 ms for a ReceiveMessage (README, "Performance"). For these three
operations of the AWS JSON protocol the body is the parameters as JSON, with blobs in base64,
so this path encodes and decodes it directly (orjson) and keeps botocore for the rest:

* the credential chain (env, profile, IRSA, ECS task role), refreshed as botocore refreshes it,
  and botocore's SigV4 signer, with the endpoint and signing scope resolved once per operation
  by the client's own endpoint rules;
* the client's HTTP session: connection pool, timeouts, proxies, TLS, and the mapping of
  transport errors to botocore's exceptions;
* the client's retry handler (standard mode: retry quota, backoff, what is retriable), and its
  after-call handlers (the retry quota's release, SQS's query-compatible error codes);
* error responses are parsed by botocore's parser and raised as the client's modeled
  exceptions, as `client.receive_message(...)` would raise them.

An operation whose model needs anything else (timestamps, renamed members, host prefixes,
checksums, compression, another signer) goes through the client as usual: `LeanCalls.create`
checks each one once.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Unpack, cast

import orjson
from aiobotocore.endpoint import convert_to_response_dict
from botocore.auth import SigV4Auth, _host_from_url  # type: ignore[attr-defined]  # the signer's own
from botocore.awsrequest import AWSRequest, prepare_request_dict
from botocore.exceptions import NoCredentialsError
from botocore.hooks import first_non_none_response
from botocore.serialize import create_serializer

if TYPE_CHECKING:
    from aiobotocore.credentials import AioCredentials
    from botocore.model import OperationModel, Shape
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_kinesis.type_defs import (
        DescribeStreamSummaryInputTypeDef,
        DescribeStreamSummaryOutputTypeDef,
        PutRecordsInputTypeDef,
        PutRecordsOutputTypeDef,
    )
    from types_aiobotocore_sqs import SQSClient
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

log = logging.getLogger(__name__)

# What the lean path encodes and decodes itself; any other type in an operation's input or
# output (timestamp, float, document, union) sends that operation through botocore.
_PLAIN_TYPES = frozenset({"string", "integer", "long", "boolean"})
_SIGV4 = frozenset({None, "v4", "sigv4"})


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


class Unsupported(Exception):
    """The operation's model needs something the lean path does not do: botocore sends it."""


# --- codecs compiled from the shape model, once per operation ---------------------------------

Codec = Callable[[Any], Any]


def _b64_encode(value: bytes | bytearray | str) -> str:
    # botocore's blob serializer: text is sent as its UTF-8 bytes. binascii directly: this
    # runs once per record, and base64.b64encode is a Python wrapper around it.
    raw = value.encode() if isinstance(value, str) else value
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _b64_decode(value: str) -> bytes:
    return binascii.a2b_base64(value)


def _codec(shape: Shape, blob: Codec, where: str) -> Codec | None:
    """A function that applies `blob` to every blob inside a value of `shape`; None when the
    shape holds no blob (the value goes as it is). Raises Unsupported for what botocore would
    convert otherwise (timestamps, renamed members, JSON-in-a-string...)."""
    kind = shape.type_name
    if kind in _PLAIN_TYPES:
        if shape.serialization.get("jsonvalue"):
            raise Unsupported(f"{where}: a JSON value in a string")
        return None
    if kind == "blob":
        return blob
    if kind == "list":
        item = _codec(shape.member, blob, f"{where}[]")  # type: ignore[attr-defined]
        return None if item is None else lambda values: [item(v) for v in values]
    if kind == "map":
        if _codec(shape.key, blob, f"{where} key") is not None:  # type: ignore[attr-defined]
            raise Unsupported(f"{where}: a map keyed by blobs")
        value = _codec(shape.value, blob, f"{where}{{}}")  # type: ignore[attr-defined]
        return None if value is None else lambda m: {k: value(v) for k, v in m.items()}
    if kind == "structure" and not getattr(shape, "is_document_type", False):
        members: list[tuple[str, Codec]] = []
        for name, member in shape.members.items():  # type: ignore[attr-defined]
            if "name" in member.serialization or member.serialization.get("location"):
                raise Unsupported(f"{where}.{name}: serialized under another name or place")
            codec = _codec(member, blob, f"{where}.{name}")
            if codec is not None:
                members.append((name, codec))
        if not members:
            return None
        if len(members) == 1:  # a PutRecords entry's Data, once per record: no loop
            ((only, only_codec),) = members

            def one_member(value: Mapping[str, Any]) -> dict[str, Any]:
                out = dict(value)
                if only in out:
                    out[only] = only_codec(out[only])
                return out

            return one_member

        def structure(value: Mapping[str, Any]) -> dict[str, Any]:
            out = dict(value)
            for name, codec in members:
                if name in out:
                    out[name] = codec(out[name])
            return out

        return structure
    raise Unsupported(f"{where}: {kind}")


@dataclass(frozen=True, slots=True)
class _Operation:
    """Everything about one operation that does not change from call to call."""

    name: str
    model: OperationModel
    url: str
    method: str
    headers: Mapping[str, str]
    signing_name: str
    signing_region: str
    encode: Codec | None
    decode: Codec | None
    needs_retry: str  # the client's event names, resolved once
    after_call: str
    after_call_error: str


class LeanCalls:
    """The lean path for some operations of one aiobotocore client (JSON protocol, SigV4)."""

    def __init__(
        self,
        client: Any,
        credentials: AioCredentials | None,
        operations: Mapping[str, _Operation],
    ) -> None:
        # botocore's own parts of this client (see the module docstring); private attributes
        # of aiobotocore's client, read once here: the integration tests run every call of the
        # daemon through this path against moto and the fault proxy.
        self._client = client
        self._events = client.meta.events
        self._endpoint = client._endpoint
        self._http = client._endpoint.http_session
        self._parsers = client._endpoint._response_parser_factory
        self._credentials = credentials
        self.operations = dict(operations)

    @classmethod
    async def create(
        cls,
        client: Any,
        credentials: AioCredentials | None,
        calls: Mapping[str, Mapping[str, Any]],
    ) -> LeanCalls:
        """Prepare `calls` (operation name -> the parameters every call of it shares, for the
        endpoint rules); an operation the lean path cannot send is left to the client."""
        service = client.meta.service_model
        prepared: dict[str, _Operation] = {}
        for name, static_params in calls.items():
            try:
                prepared[name] = await _prepare(
                    client, service.operation_model(name), static_params
                )
            except Unsupported as exc:
                log.warning(
                    "aws call on botocore's path",
                    extra={"action": "lean_unsupported", "operation": name, "reason": str(exc)},
                )
        return cls(client, credentials, prepared)

    def __contains__(self, operation: str) -> bool:
        return operation in self.operations

    async def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Send `operation` with `params`; the parsed response, or the client's exception."""
        op = self.operations[operation]
        body = orjson.dumps(op.encode(params) if op.encode is not None else params)
        context: dict[str, Any] = {}
        attempts = 1
        while True:
            response, exception = await self._attempt(op, body)
            delay = first_non_none_response(
                await self._events.emit(
                    op.needs_retry,
                    response=response,
                    endpoint=self._endpoint,
                    operation=op.model,
                    attempts=attempts,
                    caught_exception=exception,
                    request_dict={"context": context},
                )
            )
            if delay is None or delay is False:
                break
            await asyncio.sleep(delay)
            attempts += 1
        if exception is not None:
            await self._events.emit(op.after_call_error, exception=exception, context=context)
            raise exception
        assert response is not None
        http, parsed = response
        parsed["ResponseMetadata"]["RetryAttempts"] = attempts - 1
        await self._events.emit(
            op.after_call, http_response=http, parsed=parsed, model=op.model, context=context
        )
        if http.status_code >= 300:
            error = parsed.get("Error", {})
            code = context.get("error_code_override") or error.get("Code")
            raise self._client.exceptions.from_code(code)(parsed, operation)
        return parsed

    async def _attempt(
        self, op: _Operation, body: bytes
    ) -> tuple[tuple[Any, dict[str, Any]] | None, Exception | None]:
        """One signed request: ((http response, parsed), None) or (None, transport error)."""
        request = AWSRequest(method=op.method, url=op.url, data=body, headers=dict(op.headers))
        credentials = self._credentials
        if credentials is None:
            raise NoCredentialsError
        # Refreshed here when they are about to expire (IRSA, ECS and assumed roles).
        frozen = await credentials.get_frozen_credentials()
        SigV4Auth(frozen, op.signing_name, op.signing_region).add_auth(request)
        prepared = request.prepare()
        try:
            http = await self._http.send(prepared)
        except Exception as exc:  # botocore's exceptions: its retry handler classifies them
            return None, exc
        content = await http.content
        if http.status_code >= 300:
            return (http, await self._botocore_parse(op, http)), None
        try:
            parsed = orjson.loads(content) if content else {}
            if op.decode is not None:
                parsed = op.decode(parsed)
        except ValueError:
            # Not JSON, or a blob that is not base64: what botocore makes of it, as it would.
            return (http, await self._botocore_parse(op, http)), None
        metadata: dict[str, Any] = {"HTTPStatusCode": http.status_code, "HTTPHeaders": http.headers}
        request_id = http.headers.get("x-amzn-requestid")
        if request_id is not None:
            metadata["RequestId"] = request_id
        parsed["ResponseMetadata"] = metadata
        return (http, parsed), None

    async def _botocore_parse(self, op: _Operation, http: Any) -> dict[str, Any]:
        """A response as botocore's parser reads it; an error's modeled fields included."""
        response_dict = await convert_to_response_dict(http, op.model)
        parser = self._parsers.create_parser(op.model.service_model.resolved_protocol)
        parsed: dict[str, Any] = await parser.parse(response_dict, op.model.output_shape)
        if http.status_code < 300:
            return parsed
        code = parsed.get("Error", {}).get("Code")
        shape = op.model.service_model.shape_for_error_code(code) if code else None
        if shape is not None:
            parsed.update(await parser.parse(response_dict, shape))
        return parsed


async def _prepare(
    client: Any, model: OperationModel, static_params: Mapping[str, Any]
) -> _Operation:
    """Check that the lean path can send `model`, and resolve what every call shares."""
    service = model.service_model
    if service.resolved_protocol != "json":
        raise Unsupported(f"protocol {service.resolved_protocol}")
    if (
        model.has_streaming_input
        or model.has_streaming_output
        or model.has_event_stream_output
        or model.http_checksum
        or model.request_compression
        or model.endpoint
    ):
        raise Unsupported("streaming, checksums, compression or a host prefix")
    if client.meta.config.signature_version not in _SIGV4 or model.resolved_auth_type not in _SIGV4:
        raise Unsupported(f"signature {client.meta.config.signature_version}")
    encode = _codec(model.input_shape, _b64_encode, "input") if model.input_shape else None
    decode = _codec(model.output_shape, _b64_decode, "output") if model.output_shape else None

    # Once: the endpoint and signing scope from the client's endpoint rules, for the
    # parameters every call shares (SQS and Kinesis resolve by region, FIPS, dual-stack and
    # the configured endpoint; a stream ARN would change Kinesis's host, a stream name does not).
    context: dict[str, Any] = {}
    url, extra_headers, _ = await client._resolve_endpoint_ruleset(
        model, dict(static_params), context
    )
    if context.get("auth_type") not in _SIGV4:
        raise Unsupported(f"endpoint auth {context.get('auth_type')}")
    signing = context.get("signing", {})
    # The serializer's own request for its method, path and headers (target, content type,
    # SQS's query-compatible mode), and the client's user agent, as botocore would send them.
    request = create_serializer(
        service.resolved_protocol, include_validation=False
    ).serialize_to_request({}, model)
    request["headers"].update(extra_headers)
    prepare_request_dict(
        request,
        endpoint_url=url,
        user_agent=client._user_agent_creator.to_string(),
    )
    # The Host header the signer would derive from the URL on every call, twice (a urlsplit
    # and an IPv6 check each: ~12 µs of the ~60 a small call's signing costs), derived once by
    # its own function; the HTTP session sends the header as given, the value it would send.
    request["headers"]["host"] = _host_from_url(request["url"])
    event = f"{service.service_id.hyphenize()}.{model.name}"
    return _Operation(
        name=model.name,
        model=model,
        url=request["url"],
        method=request["method"],
        headers=request["headers"],
        signing_name=signing.get("signing_name", service.signing_name),
        signing_region=signing.get("region", client.meta.region_name),
        encode=encode,
        decode=decode,
        needs_retry=f"needs-retry.{event}",
        after_call=f"after-call.{event}",
        after_call_error=f"after-call-error.{event}",
    )


class LeanSqs:
    """SqsSource's client: ReceiveMessage and DeleteMessageBatch on the lean path (when their
    models allow it), every other call by the aiobotocore client itself."""

    def __init__(self, client: SQSClient, lean: LeanCalls) -> None:
        self._client = client
        self._lean = lean

    @classmethod
    async def create(
        cls, client: SQSClient, credentials: AioCredentials | None, queue_url: str
    ) -> LeanSqs:
        static = {"QueueUrl": queue_url}
        calls = {"ReceiveMessage": static, "DeleteMessageBatch": static}
        return cls(client, await LeanCalls.create(client, credentials, calls))

    async def receive_message(
        self, **kwargs: Unpack[ReceiveMessageRequestTypeDef]
    ) -> ReceiveMessageResultTypeDef:
        if "ReceiveMessage" not in self._lean:
            return await self._client.receive_message(**kwargs)
        return cast("ReceiveMessageResultTypeDef", await self._lean.call("ReceiveMessage", kwargs))

    async def delete_message_batch(
        self, **kwargs: Unpack[DeleteMessageBatchRequestTypeDef]
    ) -> DeleteMessageBatchResultTypeDef:
        if "DeleteMessageBatch" not in self._lean:
            return await self._client.delete_message_batch(**kwargs)
        return cast(
            "DeleteMessageBatchResultTypeDef", await self._lean.call("DeleteMessageBatch", kwargs)
        )

    async def change_message_visibility_batch(
        self, **kwargs: Unpack[ChangeMessageVisibilityBatchRequestTypeDef]
    ) -> ChangeMessageVisibilityBatchResultTypeDef:
        return await self._client.change_message_visibility_batch(**kwargs)


class LeanDlq:
    """DeadLetterQueue's client: SendMessageBatch on the lean path (when its model allows it).

    Not one of the three hot calls of normal traffic, but a letter batch through botocore cost
    as much as ~12 us for each event of the bench's backlog (1% broken fields): its bodies are
    encoded by the stdlib's json, ASCII-escaped, and every entry's attributes walked by shape.
    """

    def __init__(self, client: SQSClient, lean: LeanCalls) -> None:
        self._client = client
        self._lean = lean

    @classmethod
    async def create(
        cls, client: SQSClient, credentials: AioCredentials | None, dlq_url: str
    ) -> LeanDlq:
        calls = {"SendMessageBatch": {"QueueUrl": dlq_url}}
        return cls(client, await LeanCalls.create(client, credentials, calls))

    async def send_message_batch(
        self, **kwargs: Unpack[SendMessageBatchRequestTypeDef]
    ) -> SendMessageBatchResultTypeDef:
        if "SendMessageBatch" not in self._lean:
            return await self._client.send_message_batch(**kwargs)
        return cast(
            "SendMessageBatchResultTypeDef", await self._lean.call("SendMessageBatch", kwargs)
        )


class LeanKinesis:
    """KinesisSink's client: PutRecords on the lean path (when its model allows it), the
    health probe (DescribeStreamSummary) by the aiobotocore client itself."""

    def __init__(self, client: KinesisClient, lean: LeanCalls) -> None:
        self._client = client
        self._lean = lean

    @classmethod
    async def create(
        cls, client: KinesisClient, credentials: AioCredentials | None, stream_name: str
    ) -> LeanKinesis:
        calls = {"PutRecords": {"StreamName": stream_name}}
        return cls(client, await LeanCalls.create(client, credentials, calls))

    async def put_records(
        self, **kwargs: Unpack[PutRecordsInputTypeDef]
    ) -> PutRecordsOutputTypeDef:
        if "PutRecords" not in self._lean:
            return await self._client.put_records(**kwargs)
        return cast("PutRecordsOutputTypeDef", await self._lean.call("PutRecords", kwargs))

    async def describe_stream_summary(
        self, **kwargs: Unpack[DescribeStreamSummaryInputTypeDef]
    ) -> DescribeStreamSummaryOutputTypeDef:
        return await self._client.describe_stream_summary(**kwargs)
