"""Who sent a submission (AUTH_MODE, docs/authentication.md): the key set kept fresh, and each
message's signature checked against it before its body is parsed.

`monitor` verifies and counts, then publishes as `off` would: how a fleet is rolled onto
signing without losing a byte. `enforce` rejects: the submission goes whole to the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import constants
from event_processor.auth.keyset import KeySet, KeySetError, device_mismatch
from event_processor.config import AuthMode
from event_processor.contract.rules import Reason, Rejection
from event_processor.retry import Backoff, RetryPolicy

if TYPE_CHECKING:
    from event_processor.auth.keyset import KeySource
    from event_processor.contract.signing import Envelope
    from event_processor.metrics import Metrics

log = logging.getLogger(__name__)

# A key set that cannot be read (yet): retried. One that is read but invalid is KeySetError.
UNREADABLE: Final = (OSError, BotoCoreError, ClientError)
# The auth_results_total label of a message signed by the device its body names.
RESULT_OK: Final = "ok"
AUTH_REASONS: Final = (
    Reason.SIGNATURE_MISSING,
    Reason.SIGNATURE_MALFORMED,
    Reason.SIGNATURE_INVALID,
    Reason.UNKNOWN_KEY,
    Reason.DEVICE_MISMATCH,
    Reason.DEVICE_REVOKED,
)


class KeyStore:
    """The key set in use. Read before the daemon receives anything, again every refresh
    interval and, rate-limited, when a message names a key id it lacks; a failed read keeps
    the last good set (its age is a metric)."""

    def __init__(
        self,
        source: KeySource,
        metrics: Metrics,
        policy: RetryPolicy,
        *,
        refresh_s: float,
        unknown_key_refresh_min_s: float = constants.AUTH_UNKNOWN_KEY_REFRESH_MIN_S,
        clock: Callable[[], float] = time.monotonic,
        describe: Callable[[BaseException], str] = str,
    ) -> None:
        # describe: a failed read in the operator's words (app passes diagnosis's).
        self._source = source
        self._describe = describe
        self._metrics = metrics
        self._policy = policy
        self._refresh_s = refresh_s
        self._unknown_min_s = unknown_key_refresh_min_s
        self._clock = clock
        self.keys: KeySet | None = None
        self._read_at: float | None = None
        self._healthy = True  # the last read succeeded: logs say each change once
        self._refreshing: asyncio.Future[bool] | None = None
        self._unknown_refresh_at: float | None = None
        metrics.auth_keyset_age.set_function(self._age)
        metrics.auth_keyset_refresh_interval.set(refresh_s)

    def _age(self) -> float | None:
        return None if self._read_at is None else self._clock() - self._read_at

    async def load(self, stop: asyncio.Event) -> bool:
        """Read the key set for start-up; False if `stop` was set first.

        An unreadable key set (a missing secret or file, no access, an outage) is retried with
        backoff: messages wait in SQS, and nothing unverified is published. One that is read
        but invalid raises KeySetError: a settings error, which no wait will fix.
        """
        forever = self._policy.with_limits(max_attempts=2**62, deadline_s=float("inf"))
        backoff: Backoff | None = None
        while not stop.is_set():
            try:
                keys = await self._source.read()
            except UNREADABLE as exc:
                if backoff is None:
                    log.warning(
                        "key set unreadable: not receiving until it is read",
                        extra={
                            "action": "keyset_unreadable",
                            "source": self._source.name,
                            "error": self._describe(exc),
                        },
                    )
                    backoff = Backoff(forever.retrying())
                delay = backoff.next_delay()  # never None: the policy has no limits here
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay or 0.0):
                        await stop.wait()
                continue
            self._use(keys)
            return True
        return False

    async def run(self) -> None:
        """The periodic refresh: a worker side task, until the worker stops."""
        while True:
            wait_s = self._refresh_s
            if not self._healthy:
                wait_s = min(wait_s, constants.AUTH_REFRESH_RETRY_S)
            await asyncio.sleep(wait_s)  # a schedule, not a synchronisation
            await self.refresh()

    async def refresh(self) -> bool:
        """Read the key set again; on failure keep the last good one. True if it was read."""
        try:
            keys = await self._source.read()
        except (*UNREADABLE, KeySetError) as exc:
            self._metrics.auth_keyset_refresh_failures.inc()
            if self._healthy:
                log.warning(
                    "key set refresh failed: keeping the last good set",
                    extra={
                        "action": "keyset_refresh_failed",
                        "source": self._source.name,
                        "error": self._describe(exc),
                        "age_s": round(self._age() or 0.0, 1),
                    },
                )
            self._healthy = False
            return False
        self._use(keys)
        return True

    async def refresh_for_unknown_key(self) -> bool:
        """Read the key set now, for a message naming a key id it lacks (a key added since the
        last refresh). One read at a time, shared by every message waiting on it, and at most
        one per AUTH_UNKNOWN_KEY_REFRESH_MIN_S; True if a read succeeded (look again)."""
        if self._refreshing is None:
            now = self._clock()
            last = self._unknown_refresh_at
            if last is not None and now - last < self._unknown_min_s:
                return False
            self._unknown_refresh_at = now
            self._refreshing = refreshing = asyncio.ensure_future(self.refresh())
            refreshing.add_done_callback(self._refreshed)
        # Shielded: a waiter's cancellation (a shutdown) leaves the read to finish for the rest.
        return await asyncio.shield(self._refreshing)

    def _refreshed(self, _: asyncio.Future[bool]) -> None:
        self._refreshing = None

    def _use(self, keys: KeySet) -> None:
        changed = keys != self.keys
        recovered = not self._healthy
        self.keys = keys
        self._read_at = self._clock()
        self._healthy = True
        self._metrics.auth_keyset_keys.set(len(keys.keys))
        self._metrics.auth_keyset_revoked_devices.set(len(keys.revoked_devices))
        if changed or recovered:
            log.info(
                "key set read",
                extra={
                    "action": "keyset_read",
                    "source": self._source.name,
                    "key_ids": sorted(keys.keys),
                    "revoked_devices": len(keys.revoked_devices),
                },
            )


class Authenticator:
    """A message's signature checked before its body is parsed, its device once it is."""

    def __init__(self, mode: AuthMode, store: KeyStore, metrics: Metrics) -> None:
        if mode is AuthMode.OFF:
            raise ValueError("AUTH_MODE=off checks nothing: build no Authenticator")
        self.enforce = mode is AuthMode.ENFORCE
        self._store = store
        self._results = metrics.auth_results.counts
        for result in (RESULT_OK, *AUTH_REASONS):
            self._results.setdefault(result, 0)  # exported from the start, at 0
        # By key id: bounded, since only a key id of the key set verifies.
        self._verified = metrics.auth_verified.counts

    async def verify(self, attributes: Mapping[str, Any], body: str) -> Envelope | Rejection | None:
        """The envelope if the signature holds; else its rejection (enforce) or None (monitor:
        counted, published as if unsigned). Costs two HMACs, never a parse."""
        store = self._store
        keys = store.keys
        assert keys is not None  # the worker receives only once the store has read a key set
        verdict = keys.verify(attributes, body)
        if (
            isinstance(verdict, Rejection)
            and verdict.reason is Reason.UNKNOWN_KEY
            and await store.refresh_for_unknown_key()
        ):
            keys = store.keys
            assert keys is not None
            verdict = keys.verify(attributes, body)
        if isinstance(verdict, Rejection):
            self._results[verdict.reason] += 1
            return verdict if self.enforce else None
        self._verified[verdict.key_id] = self._verified.get(verdict.key_id, 0) + 1
        return verdict

    def settle(self, envelope: Envelope, device_id: str | None) -> Rejection | None:
        """A verified message's result once its body is parsed: `ok`, or `device_mismatch`
        (enforce: its rejection) when the body names another device. `device_id` None: the
        body was rejected before it named a valid one, and that rejection says why."""
        if device_id is None or device_id == envelope.device_id:
            self._results[RESULT_OK] += 1
            return None
        self._results[Reason.DEVICE_MISMATCH] += 1
        return device_mismatch(envelope, device_id) if self.enforce else None
