"""A lean request path for the three hot calls: ReceiveMessage, DeleteMessageBatch, PutRecords.

botocore spends most of a call walking its shape model, value by value, to serialize the
request and parse the response, and emitting a dozen events around it: most of the daemon's
CPU went there (docs/performance.md, "Choices that hold the cost down"). For these three
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
checks each one once. So does an operation the path cannot be prepared for, or that breaks at
a call, because a release of aiobotocore or botocore changed a private part it reads
(`_Internals`): logged once, `event_processor_lean_path` 0, slower and never broken.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack, cast

import aiobotocore.endpoint
import botocore.auth
import botocore.awsrequest
import botocore.hooks
import botocore.serialize
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import NoCredentialsError

if TYPE_CHECKING:
    from aiobotocore.credentials import AioCredentials
    from botocore.model import OperationModel, Shape
    from prometheus_client import Gauge
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
# What a changed private part raises when the lean path uses it: an attribute gone or renamed,
# a signature changed, a key no longer there. Never an AWS or transport error: those are
# botocore's own (aiobotocore's HTTP session maps every error of its own to one of them).
_BROKEN = (AttributeError, TypeError, LookupError, NameError)


class Unsupported(Exception):
    """The operation's model needs something the lean path does not do: botocore sends it."""


class LeanPathBroken(Exception):
    """The lean path failed at a call in a way no AWS answer explains (`_BROKEN`): the client
    sends the operation from then on. `sent`: a request may have reached AWS before it failed."""

    def __init__(self, operation: str, *, sent: bool) -> None:
        super().__init__(
            f"{operation}: the lean path failed {'after' if sent else 'before'} sending"
        )
        self.operation = operation
        self.sent = sent


def _reason(exc: BaseException) -> str:
    """What went wrong, for the log line: `_BROKEN`'s messages name code (attributes, arguments,
    keys); another exception's could quote a URL or a value, so only its class is given."""
    if isinstance(exc, _BROKEN):
        return f"{type(exc).__name__}: {exc}"[:300]
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class _Internals:
    """The private or undocumented parts of aiobotocore and botocore the lean path uses, looked
    up once per client at start-up, so that a release that renames one is found there rather
    than at the first call. The pin in pyproject.toml bounds the releases; the fallback test
    (tests/integration/test_lean_fallback.py) removes each of these in turn."""

    endpoint: Any
    http: Any  # the endpoint's HTTP session: pool, timeouts, proxies, TLS
    parsers: Any  # the endpoint's response parser factory
    resolve_endpoint: Callable[..., Awaitable[tuple[str, dict[str, str], Any]]]
    user_agent: str
    host_from_url: Callable[[str], str]
    create_serializer: Callable[..., Any]
    prepare_request_dict: Callable[..., None]
    convert_to_response_dict: Callable[..., Awaitable[Any]]
    first_non_none_response: Callable[[Any], Any]

    @classmethod
    def of(cls, client: Any) -> _Internals:
        """Raises whatever a missing or changed part raises (AttributeError, mostly)."""
        endpoint = client._endpoint
        return cls(
            endpoint=endpoint,
            http=endpoint.http_session,
            parsers=endpoint._response_parser_factory,
            resolve_endpoint=client._resolve_endpoint_ruleset,
            user_agent=client._user_agent_creator.to_string(),
            # The signer's own, for the Host header (see _prepare).
            host_from_url=botocore.auth._host_from_url,  # type: ignore[attr-defined]
            create_serializer=botocore.serialize.create_serializer,
            prepare_request_dict=botocore.awsrequest.prepare_request_dict,
            convert_to_response_dict=aiobotocore.endpoint.convert_to_response_dict,
            first_non_none_response=botocore.hooks.first_non_none_response,
        )


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
        internals: _Internals | None,
        operations: Mapping[str, _Operation],
        gauge: Gauge | None = None,
    ) -> None:
        # None when the client's private parts could not be read: then no operations either.
        self._client = client
        self._events = client.meta.events
        self._internals = internals
        self._credentials = credentials
        self._gauge = gauge
        self.operations = dict(operations)

    @classmethod
    async def create(
        cls,
        client: Any,
        credentials: AioCredentials | None,
        calls: Mapping[str, Mapping[str, Any]],
        gauge: Gauge | None = None,
    ) -> LeanCalls:
        """Prepare `calls` (operation name -> the parameters every call of it shares, for the
        endpoint rules). An operation the lean path cannot send, or cannot be prepared for
        (for any reason: the daemon must start), is left to the client; `gauge` (labelled by
        operation) says which: 1 on the lean path, 0 on the client's."""
        service = client.meta.service_model
        internals: _Internals | None = None
        unreadable: Exception | None = None
        try:
            internals = _Internals.of(client)
        except Exception as exc:  # reported below, once per operation it sends to the client
            unreadable = exc
        prepared: dict[str, _Operation] = {}
        for name, static_params in calls.items():
            try:
                if internals is None:
                    assert unreadable is not None
                    raise unreadable
                prepared[name] = await _prepare(
                    client, internals, service.operation_model(name), static_params
                )
            except Unsupported as exc:
                log.warning(
                    "aws call on botocore's path",
                    extra={"action": "lean_unsupported", "operation": name, "reason": str(exc)},
                )
            except Exception as exc:
                # A private part missing or changed (a release the pin let in), or a bug of
                # ours: the client's own path, slower and never broken.
                _report_unavailable(name, "start-up", exc)
            if gauge is not None:
                gauge.labels(name).set(1 if name in prepared else 0)
        return cls(client, credentials, internals, prepared, gauge)

    def __contains__(self, operation: str) -> bool:
        return operation in self.operations

    async def call_or_fall_back(
        self,
        operation: str,
        params: Mapping[str, Any],
        client_call: Callable[..., Awaitable[Any]],
    ) -> Any:
        """`operation` on the lean path while it is on it, else by `client_call` (the client's
        own method). A call that breaks the lean path is sent again by the client, and so is
        every later one; AWS and transport errors are raised as they are, on either path."""
        if operation in self.operations:
            try:
                return await self.call(operation, params)
            except LeanPathBroken as exc:
                self._fall_back(exc)
        return await client_call(**params)

    def _fall_back(self, broken: LeanPathBroken) -> None:
        """Send `broken.operation` by the client from now on; said once (calls that fail at
        the same moment find it done)."""
        if self.operations.pop(broken.operation, None) is None:
            return
        # After sending, the failed attempt may have reached AWS: its records or letters may
        # land twice (at least once, as after a time-out).
        stage = "after sending" if broken.sent else "before sending"
        cause = broken.__cause__
        _report_unavailable(broken.operation, stage, cause if cause is not None else broken)
        if self._gauge is not None:
            self._gauge.labels(broken.operation).set(0)

    async def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Send `operation` with `params`; the parsed response, or the client's exception.
        LeanPathBroken when the path itself fails (`_BROKEN`), which no AWS answer causes."""
        op = self.operations[operation]
        internals = self._internals
        assert internals is not None  # no operations without them
        sent = False
        try:
            body = orjson.dumps(op.encode(params) if op.encode is not None else params)
            context: dict[str, Any] = {}
            attempts = 1
            while True:
                request = await self._signed(op, body)
                sent = True
                response, exception = await self._exchange(op, internals, request)
                delay = internals.first_non_none_response(
                    await self._events.emit(
                        op.needs_retry,
                        response=response,
                        endpoint=internals.endpoint,
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
        except _BROKEN as exc:
            raise LeanPathBroken(operation, sent=sent) from exc
        return parsed

    async def _signed(self, op: _Operation, body: bytes) -> Any:
        """The request of one attempt, signed with the credentials as they are now."""
        request = AWSRequest(method=op.method, url=op.url, data=body, headers=dict(op.headers))
        credentials = self._credentials
        if credentials is None:
            raise NoCredentialsError
        # Refreshed here when they are about to expire (IRSA, ECS and assumed roles).
        frozen = await credentials.get_frozen_credentials()
        SigV4Auth(frozen, op.signing_name, op.signing_region).add_auth(request)
        return request.prepare()

    async def _exchange(
        self, op: _Operation, internals: _Internals, request: Any
    ) -> tuple[tuple[Any, dict[str, Any]] | None, Exception | None]:
        """One request sent: ((http response, parsed), None) or (None, transport error)."""
        try:
            http = await internals.http.send(request)
        except Exception as exc:  # botocore's exceptions: its retry handler classifies them
            return None, exc
        content = await http.content
        if http.status_code >= 300:
            return (http, await self._botocore_parse(op, internals, http)), None
        try:
            parsed = orjson.loads(content) if content else {}
            if op.decode is not None:
                parsed = op.decode(parsed)
        except ValueError:
            # Not JSON, or a blob that is not base64: what botocore makes of it, as it would.
            return (http, await self._botocore_parse(op, internals, http)), None
        metadata: dict[str, Any] = {"HTTPStatusCode": http.status_code, "HTTPHeaders": http.headers}
        request_id = http.headers.get("x-amzn-requestid")
        if request_id is not None:
            metadata["RequestId"] = request_id
        parsed["ResponseMetadata"] = metadata
        return (http, parsed), None

    async def _botocore_parse(
        self, op: _Operation, internals: _Internals, http: Any
    ) -> dict[str, Any]:
        """A response as botocore's parser reads it; an error's modeled fields included."""
        response_dict = await internals.convert_to_response_dict(http, op.model)
        parser = internals.parsers.create_parser(op.model.service_model.resolved_protocol)
        parsed: dict[str, Any] = await parser.parse(response_dict, op.model.output_shape)
        if http.status_code < 300:
            return parsed
        code = parsed.get("Error", {}).get("Code")
        shape = op.model.service_model.shape_for_error_code(code) if code else None
        if shape is not None:
            parsed.update(await parser.parse(response_dict, shape))
        return parsed


def _report_unavailable(operation: str, stage: str, exc: BaseException) -> None:
    """The one line that says an operation left the lean path, and why (with the traceback:
    what a bump of aiobotocore or botocore changed is found there)."""
    log.warning(
        "aws call on the client's own path: the lean path is unavailable",
        extra={
            "action": "lean_path_unavailable",
            "operation": operation,
            "stage": stage,
            "reason": _reason(exc),
        },
        # The traceback of what names code only (see _reason).
        exc_info=exc if isinstance(exc, _BROKEN) else None,
    )


async def _prepare(
    client: Any, internals: _Internals, model: OperationModel, static_params: Mapping[str, Any]
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
    url, extra_headers, _ = await internals.resolve_endpoint(model, dict(static_params), context)
    if context.get("auth_type") not in _SIGV4:
        raise Unsupported(f"endpoint auth {context.get('auth_type')}")
    signing = context.get("signing", {})
    # The serializer's own request for its method, path and headers (target, content type,
    # SQS's query-compatible mode), and the client's user agent, as botocore would send them.
    request = internals.create_serializer(
        service.resolved_protocol, include_validation=False
    ).serialize_to_request({}, model)
    request["headers"].update(extra_headers)
    internals.prepare_request_dict(request, endpoint_url=url, user_agent=internals.user_agent)
    # The Host header the signer would derive from the URL on every call, twice (a urlsplit
    # and an IPv6 check each), derived once by its own function; the HTTP session sends the
    # header as given, the value it would send.
    request["headers"]["host"] = internals.host_from_url(request["url"])
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
    models allow it and it could be prepared), every other call by the aiobotocore client."""

    def __init__(self, client: SQSClient, lean: LeanCalls) -> None:
        self._client = client
        self._lean = lean

    @classmethod
    async def create(
        cls,
        client: SQSClient,
        credentials: AioCredentials | None,
        queue_url: str,
        gauge: Gauge | None = None,
    ) -> LeanSqs:
        static = {"QueueUrl": queue_url}
        calls = {"ReceiveMessage": static, "DeleteMessageBatch": static}
        return cls(client, await LeanCalls.create(client, credentials, calls, gauge))

    async def receive_message(
        self, **kwargs: Unpack[ReceiveMessageRequestTypeDef]
    ) -> ReceiveMessageResultTypeDef:
        return cast(
            "ReceiveMessageResultTypeDef",
            await self._lean.call_or_fall_back(
                "ReceiveMessage", kwargs, self._client.receive_message
            ),
        )

    async def delete_message_batch(
        self, **kwargs: Unpack[DeleteMessageBatchRequestTypeDef]
    ) -> DeleteMessageBatchResultTypeDef:
        return cast(
            "DeleteMessageBatchResultTypeDef",
            await self._lean.call_or_fall_back(
                "DeleteMessageBatch", kwargs, self._client.delete_message_batch
            ),
        )

    async def change_message_visibility_batch(
        self, **kwargs: Unpack[ChangeMessageVisibilityBatchRequestTypeDef]
    ) -> ChangeMessageVisibilityBatchResultTypeDef:
        return await self._client.change_message_visibility_batch(**kwargs)


class LeanDlq:
    """DeadLetterQueue's client: SendMessageBatch on the lean path (when its model allows it
    and it could be prepared).

    Not one of the three hot calls of normal traffic, but where events are rejected a letter
    batch through botocore costs as much as publishing them: its bodies are encoded by the
    stdlib's json, ASCII-escaped, and every entry's attributes walked by shape.
    """

    def __init__(self, client: SQSClient, lean: LeanCalls) -> None:
        self._client = client
        self._lean = lean

    @classmethod
    async def create(
        cls,
        client: SQSClient,
        credentials: AioCredentials | None,
        dlq_url: str,
        gauge: Gauge | None = None,
    ) -> LeanDlq:
        calls = {"SendMessageBatch": {"QueueUrl": dlq_url}}
        return cls(client, await LeanCalls.create(client, credentials, calls, gauge))

    async def send_message_batch(
        self, **kwargs: Unpack[SendMessageBatchRequestTypeDef]
    ) -> SendMessageBatchResultTypeDef:
        return cast(
            "SendMessageBatchResultTypeDef",
            await self._lean.call_or_fall_back(
                "SendMessageBatch", kwargs, self._client.send_message_batch
            ),
        )


class LeanKinesis:
    """KinesisSink's client: PutRecords on the lean path (when its model allows it and it could
    be prepared), the health probe (DescribeStreamSummary) by the aiobotocore client itself."""

    def __init__(self, client: KinesisClient, lean: LeanCalls) -> None:
        self._client = client
        self._lean = lean

    @classmethod
    async def create(
        cls,
        client: KinesisClient,
        credentials: AioCredentials | None,
        stream_name: str,
        gauge: Gauge | None = None,
    ) -> LeanKinesis:
        calls = {"PutRecords": {"StreamName": stream_name}}
        return cls(client, await LeanCalls.create(client, credentials, calls, gauge))

    async def put_records(
        self, **kwargs: Unpack[PutRecordsInputTypeDef]
    ) -> PutRecordsOutputTypeDef:
        return cast(
            "PutRecordsOutputTypeDef",
            await self._lean.call_or_fall_back("PutRecords", kwargs, self._client.put_records),
        )

    async def describe_stream_summary(
        self, **kwargs: Unpack[DescribeStreamSummaryInputTypeDef]
    ) -> DescribeStreamSummaryOutputTypeDef:
        return await self._client.describe_stream_summary(**kwargs)
