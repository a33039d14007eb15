"""`make profile`'s summary of py-spy's raw output (devworld.bench.profile)."""

from __future__ import annotations

from devworld.bench.profile import (
    AWS_CALL,
    IMPORTS,
    MODELS,
    NO_FRAMES,
    OTHER,
    OURS,
    STARTUP,
    module_of,
    report,
    summarise,
)

_ENTRY = "<module> (event_processor/__main__.py:5);main (event_processor/cli.py:130)"
_LOOP = f"{_ENTRY};run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118)"
_CALL = "SqsSource.receive (event_processor/pipeline/source.py:70);_make_api_call (aiobotocore/client.py:399)"


def _line(frames: str, count: int) -> str:
    return f"{frames} {count}\n"


def test_samples_fall_into_the_first_phase_that_matches() -> None:
    """Imports win, then start-up, an API call, the models, our code, and the rest."""
    lines = [
        _line(
            f"{_ENTRY};_find_and_load (<frozen importlib._bootstrap>:1176);"
            "<module> (botocore/client.py:1)",
            5,
        ),
        _line(
            f"{_LOOP};run (event_processor/app.py:150);create_client (aiobotocore/session.py:1)", 2
        ),
        _line(f"{_LOOP};{_CALL};JSONSerializer._serialize (botocore/serialize.py:461)", 7),
        _line(
            f"{_LOOP};Pipeline._process (event_processor/pipeline/submission.py:79);walk (event_processor/contract/parse.py:300)",
            3,
        ),
        _line(f"{_LOOP};Worker._finished (event_processor/pipeline/worker.py:311)", 4),
        _line(f"{_LOOP};ResponseHandler.data_received (aiohttp/client_proto.py:359)", 6),
        _line("", 1),
    ]
    summary = summarise(lines)
    assert summary.samples == 28
    assert summary.phases == {
        IMPORTS: 5,
        STARTUP: 2,
        AWS_CALL: 7,
        MODELS: 3,
        OURS: 4,
        OTHER: 6,
        NO_FRAMES: 1,
    }
    assert summary.call_steps == {"serialize": 7}


def test_the_innermost_step_of_an_api_call_names_it() -> None:
    """A signer called from the hook emitter counts as signing, not as hooks."""
    stack = (
        f"{_LOOP};{_CALL};AioHierarchicalEmitter._emit (aiobotocore/hooks.py:68);"
        "SigV4Auth.add_auth (botocore/auth.py:420);sha256 (hashlib.py:1)"
    )
    summary = summarise([_line(stack, 3), _line(f"{_LOOP};{_CALL}", 1)])
    assert summary.call_steps == {"sign": 3, "client (other)": 1}


def test_leaf_frames_and_modules_are_counted_by_self_and_inclusive_time() -> None:
    """The leaf gets self time; every module on the stack gets inclusive time once."""
    stack = f"{_LOOP};{_CALL};ResponseParser._parse_shape (botocore/parsers.py:345)"
    summary = summarise([_line(stack, 2), _line(stack, 1)])
    assert summary.leaf_functions == {"ResponseParser._parse_shape (botocore/parsers.py)": 3}
    assert summary.leaf_modules == {"botocore.parsers": 3}
    assert summary.inclusive_modules["aiobotocore.client"] == 3
    assert summary.inclusive_modules["event_processor.cli"] == 3


def test_module_names_come_from_py_spy_paths() -> None:
    """Paths become dotted names, the stdlib's and frozen modules' included."""
    assert module_of("botocore/hooks.py") == "botocore.hooks"
    assert module_of("aiohttp/__init__.py") == "aiohttp"
    assert module_of("/usr/lib/python3.11/json/encoder.py") == "json.encoder"
    assert module_of("<frozen importlib._bootstrap>") == "importlib._bootstrap"


def test_the_report_lists_every_phase_with_its_share() -> None:
    """Every phase is printed, even an empty one, so two reports line up."""
    text = report(summarise([_line(f"{_LOOP};{_CALL}", 4)]), 0.01)
    assert "4 samples (~0.04 s" in text
    assert f"100.0%        4  {AWS_CALL}" in text
    assert f"  0.0%        0  {IMPORTS}" in text
