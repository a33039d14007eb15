"""The key store's reads (start-up, refresh, unknown key) and the authenticator's modes, against
a scripted key source and a fake clock (pure logic: the emulator's Secrets Manager is in
tests/integration/test_auth.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from botocore.exceptions import EndpointConnectionError
from prometheus_client import CollectorRegistry

from event_processor.auth.authenticator import Authenticator, KeyStore
from event_processor.auth.keyset import KeySet, KeySetError
from event_processor.config import AuthMode
from event_processor.contract.rules import Reason, Rejection
from event_processor.contract.signing import Envelope
from event_processor.metrics import Metrics
from event_processor.retry import RetryPolicy
from tests.unit.fakes import FakeKeySource
from tests.unit.test_keyset import BODY, DEVICE, MASTER, OTHER_DEVICE, OTHER_MASTER, signed

NO_WAIT = RetryPolicy(initial_s=0.0, max_backoff_s=0.0)
K1 = KeySet({"k1": MASTER})
K1_K2 = KeySet({"k1": MASTER, "k2": OTHER_MASTER})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def metrics() -> tuple[Metrics, Callable[..., float]]:
    registry = CollectorRegistry()

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        value = registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    return Metrics(registry, memory_limit_bytes=None), sample


def store(
    source: FakeKeySource, clock: Clock | None = None
) -> tuple[KeyStore, Callable[..., float]]:
    m, sample = metrics()
    return KeyStore(source, m, NO_WAIT, refresh_s=300, clock=clock or Clock()), sample


OUTAGE = EndpointConnectionError(endpoint_url="http://secrets")


async def test_start_up_retries_an_unreadable_key_set_until_it_is_read() -> None:
    """Unreadable (an outage, a missing file) is retried; the first good read ends the wait."""
    source = FakeKeySource(OUTAGE, FileNotFoundError("keys.json"), OUTAGE, K1)
    keys, sample = store(source)
    assert await keys.load(asyncio.Event())
    assert source.reads == 4
    assert keys.keys == K1
    assert sample("event_processor_auth_keyset_keys") == 1


async def test_start_up_gives_up_on_a_stop() -> None:
    """A stop while the key set is unreadable ends the wait without a key set."""
    stop = asyncio.Event()
    stop.set()
    keys, _ = store(FakeKeySource(OUTAGE))
    assert not await keys.load(stop)
    assert keys.keys is None


async def test_an_invalid_key_set_at_start_up_raises() -> None:
    """Invalid is a settings error: no retry fixes it."""
    source = FakeKeySource(KeySetError("key k1 is not base64"), K1)
    keys, _ = store(source)
    with pytest.raises(KeySetError):
        await keys.load(asyncio.Event())
    assert source.reads == 1


async def test_a_failed_refresh_keeps_the_last_good_set_and_its_age_grows() -> None:
    """Unreadable or invalid on refresh: the old set stays, failures count, age shows it."""
    clock = Clock()
    source = FakeKeySource(K1, OUTAGE, KeySetError("bad"), K1_K2)
    keys, sample = store(source, clock)
    await keys.load(asyncio.Event())
    assert sample("event_processor_auth_keyset_age_seconds") == 0
    clock.now += 400
    assert not await keys.refresh()
    assert not await keys.refresh()
    assert keys.keys == K1
    assert sample("event_processor_auth_keyset_refresh_failures_total") == 2
    assert sample("event_processor_auth_keyset_age_seconds") == 400
    assert await keys.refresh()
    assert keys.keys == K1_K2
    assert sample("event_processor_auth_keyset_age_seconds") == 0
    assert sample("event_processor_auth_keyset_keys") == 2
    assert sample("event_processor_auth_keyset_refresh_interval_seconds") == 300


async def test_unknown_key_refreshes_are_shared_and_rate_limited() -> None:
    """Concurrent messages share one read; another comes only after the minimum interval."""
    clock = Clock()
    source = FakeKeySource(K1)
    keys, _ = store(source, clock)
    await keys.load(asyncio.Event())
    source.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(keys.refresh_for_unknown_key()) for _ in range(5)]
    await asyncio.sleep(0)
    source.gate.set()
    assert await asyncio.gather(*waiting) == [True] * 5
    assert source.reads == 2  # start-up, then one shared read
    clock.now += 29
    assert not await keys.refresh_for_unknown_key()
    assert source.reads == 2
    clock.now += 1
    assert await keys.refresh_for_unknown_key()
    assert source.reads == 3


async def authenticator(
    mode: AuthMode, *answers: KeySet | BaseException, clock: Clock | None = None
) -> tuple[Authenticator, FakeKeySource, Callable[..., float]]:
    source = FakeKeySource(*answers)
    m, sample = metrics()
    keys = KeyStore(source, m, NO_WAIT, refresh_s=300, clock=clock or Clock())
    await keys.load(asyncio.Event())
    return Authenticator(mode, keys, m), source, sample


def results(sample: Callable[..., float], result: str) -> float:
    return sample("event_processor_auth_results_total", {"result": result})


async def test_enforce_returns_rejections_and_monitor_only_counts_them() -> None:
    """The same failures: enforce hands back the rejection, monitor None; both count it."""
    for mode, expect_rejection in ((AuthMode.ENFORCE, True), (AuthMode.MONITOR, False)):
        auth, _, sample = await authenticator(mode, K1)
        verdict = await auth.verify({}, BODY)
        if expect_rejection:
            assert isinstance(verdict, Rejection)
            assert verdict.reason is Reason.SIGNATURE_MISSING
        else:
            assert verdict is None
        assert results(sample, "signature_missing") == 1
        ok = await auth.verify(signed(), BODY)
        assert isinstance(ok, Envelope)
        assert sample("event_processor_auth_verified_total", {"key_id": "k1"}) == 1


async def test_settle_counts_ok_or_a_device_mismatch() -> None:
    """One result per message: ok when the body names the signer (or no valid device)."""
    auth, _, sample = await authenticator(AuthMode.ENFORCE, K1)
    envelope = await auth.verify(signed(), BODY)
    assert isinstance(envelope, Envelope)
    assert auth.settle(envelope, DEVICE) is None
    assert auth.settle(envelope, None) is None
    mismatch = auth.settle(envelope, OTHER_DEVICE)
    assert isinstance(mismatch, Rejection)
    assert mismatch.reason is Reason.DEVICE_MISMATCH
    assert results(sample, "ok") == 2
    assert results(sample, "device_mismatch") == 1
    monitor, _, sample = await authenticator(AuthMode.MONITOR, K1)
    assert monitor.settle(envelope, OTHER_DEVICE) is None
    assert results(sample, "device_mismatch") == 1


async def test_an_unknown_key_is_looked_up_again_once() -> None:
    """A key added since the last read verifies after the refresh it triggers."""
    auth, source, sample = await authenticator(AuthMode.ENFORCE, K1, K1_K2)
    verdict = await auth.verify(signed(key_id="k2", master=OTHER_MASTER), BODY)
    assert isinstance(verdict, Envelope)
    assert verdict.key_id == "k2"
    assert source.reads == 2
    assert results(sample, "unknown_key") == 0


async def test_an_unknown_key_still_unknown_after_the_refresh_is_rejected() -> None:
    """The refresh did not bring it: unknown_key, and the next one within 30 s reads nothing."""
    auth, source, sample = await authenticator(AuthMode.ENFORCE, K1)
    for _ in range(3):
        verdict = await auth.verify(signed(key_id="k9"), BODY)
        assert isinstance(verdict, Rejection)
        assert verdict.reason is Reason.UNKNOWN_KEY
    assert source.reads == 2
    assert results(sample, "unknown_key") == 3


def test_off_builds_no_authenticator() -> None:
    """AUTH_MODE=off is no checks at all, not a mode of the authenticator."""
    m, _ = metrics()
    keys = KeyStore(FakeKeySource(K1), m, NO_WAIT, refresh_s=300)
    with pytest.raises(ValueError, match="off"):
        Authenticator(AuthMode.OFF, keys, m)
