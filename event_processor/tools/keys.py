"""`keys new` and `keys derive`: a fresh master key for the key set, and a device's key for
its enrolment (docs/authentication.md). Both print a secret on stdout, which is their job;
nothing else they print (errors included) ever holds one.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import diagnosis, exitcodes
from event_processor.auth.keyset import KeySet, KeySetError, parse_secret, read_file
from event_processor.config import Settings
from event_processor.contract import signing
from event_processor.tools import aws

# A new master key: twice the minimum would be no stronger; HMAC-SHA256's own block is 64.
NEW_KEY_BYTES: Final = signing.MIN_MASTER_KEY_BYTES


def read_key_set(settings: Settings) -> KeySet:
    """The key set the daemon reads with these settings (AUTH_KEYS_SECRET_ID or AUTH_KEYS_FILE),
    read once with boto3: for the tools and the sensor fleet."""
    try:
        if settings.auth_keys_file is not None:
            try:
                return KeySet.parse(read_file(settings.auth_keys_file))
            except OSError as exc:
                problem = diagnosis.key_file_unreadable(diagnosis.key_set_resource(settings), exc)
                raise aws.ToolError(str(problem)) from exc
        secret_id = settings.auth_keys_secret_id
        if secret_id is None:
            raise aws.UsageError(
                "no key set: pass --auth-keys-secret-id or --auth-keys-file"
                " (or set AUTH_KEYS_SECRET_ID or AUTH_KEYS_FILE)"
            )
        client = aws.client(settings, "secretsmanager")
        try:
            response = client.get_secret_value(SecretId=secret_id)
        except (ClientError, BotoCoreError) as exc:
            place = diagnosis.where_of(client, settings.endpoint_url)
            problem = diagnosis.diagnose(exc, diagnosis.key_set_resource(settings), place)
            raise aws.ToolError(str(problem)) from exc
        return parse_secret(response, secret_id)
    except KeySetError as exc:
        raise aws.UsageError(f"invalid key set: {exc}") from exc


def new_key_id(now: datetime | None = None) -> str:
    """A key id that sorts by date and does not collide: 2026-12-03-5f2a9c."""
    return f"{(now or datetime.now(UTC)):%Y-%m-%d}-{secrets.token_hex(3)}"


def new_entry(key_id: str) -> dict[str, str]:
    """A fresh master key under `key_id`, as the key set's "keys" holds it."""
    return {key_id: base64.b64encode(secrets.token_bytes(NEW_KEY_BYTES)).decode()}


def choose_key_id(keys: KeySet, key_id: str | None) -> str:
    """The master key to derive devices' keys from: `key_id`, which must be in the set, or
    the set's only key (--key-id is needed when there are several)."""
    if key_id is None:
        if len(keys.keys) != 1:
            raise aws.UsageError(
                f"the key set has {len(keys.keys)} keys ({', '.join(keys.keys)}): pass --key-id"
            )
        [key_id] = keys.keys
    if key_id not in keys.keys:
        raise aws.UsageError(f"key id {key_id} is not in the key set ({', '.join(keys.keys)})")
    return key_id


def enrolment(keys: KeySet, device_id: str, key_id: str | None) -> dict[str, str]:
    """What a device is issued: its id, the key id to name and its derived key (base64)."""
    if not signing.is_device_id(device_id):
        raise aws.UsageError("--device-id must be a canonical 8-4-4-4-12 UUID")
    device_id = device_id.lower()  # the envelope carries the lowercase form
    key_id = choose_key_id(keys, key_id)
    if device_id in keys.revoked_devices:
        raise aws.UsageError(f"device {device_id} is revoked in the key set: it cannot enrol")
    device_key = keys.device_key(key_id, device_id)
    return {
        "device_id": device_id,
        "key_id": key_id,
        "device_key": base64.b64encode(device_key).decode(),
    }


def read_enrolment(text: str) -> tuple[str, str, bytes]:
    """(device_id, key_id, device_key) from what `keys derive` printed; ValueError if it is not
    that (the message never quotes the key)."""
    try:
        doc: Any = json.loads(text)
        device_id, key_id = str(doc["device_id"]), str(doc["key_id"])
        device_key = base64.b64decode(str(doc["device_key"]), validate=True)
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            'not an enrolment: {"device_id": ..., "key_id": ..., "device_key": <base64>}'
        ) from None
    if not signing.is_device_id(device_id) or not signing.is_key_id(key_id):
        raise ValueError("the enrolment's device_id or key_id is malformed")
    return device_id.lower(), key_id, device_key


# --------------------------------------------------------------------------------------------
# CLI


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser(
        "keys",
        help="sensor signing keys: a new master key, a device's key",
        description="Keys of the sensor-signature envelope (docs/authentication.md).",
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = key_commands.add_parser(
        "new",
        help="print a fresh master key as a key set entry",
        description="Print a fresh 32-byte master key as a key set entry, to add under the "
        'key set\'s "keys" (or, with --key-set, a whole key set holding it).',
    )
    new.add_argument("--key-id", default=None, help="its id (default: today's date and 6 hex)")
    new.add_argument("--key-set", action="store_true", help="print a whole key set holding it")
    new.set_defaults(handler=new_command)
    derive = key_commands.add_parser(
        "derive",
        help="print a device's key for its enrolment",
        description="Print what a device is issued at enrolment (device id, key id, device "
        "key), derived from the key set the daemon reads (AUTH_KEYS_SECRET_ID or AUTH_KEYS_FILE).",
    )
    aws.add_flags(derive, "auth_keys_secret_id", "auth_keys_file")
    derive.add_argument("--device-id", required=True, help="the device's UUID")
    derive.add_argument(
        "--key-id", default=None, help="the master key to derive from (needed if several)"
    )
    derive.set_defaults(handler=derive_command)


def new_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    key_id = args.key_id or new_key_id()
    if not signing.is_key_id(key_id):
        print("--key-id must be 1-64 characters of A-Z a-z 0-9 . _ -", file=sys.stderr)
        return exitcodes.USAGE
    entry = new_entry(key_id)
    doc: dict[str, Any] = {"keys": entry, "revoked_devices": []} if args.key_set else entry
    print(json.dumps(doc), file=out or sys.stdout)
    return exitcodes.OK


@aws.tool_command
def derive_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    print(json.dumps(enrolment(read_key_set(settings), args.device_id, args.key_id)), file=out)
    return exitcodes.OK
