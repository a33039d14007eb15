"""AWS limits and tuning constants, each with the reason it has its value."""

# --- Kinesis PutRecords limits (moto enforces none of them, so we must) ---
# A PutRecords request carries at most 500 records.
PUT_RECORDS_MAX_RECORDS = 500
# ...and at most 5 MiB, counting data plus partition keys.
PUT_RECORDS_MAX_BYTES = 5 * 1024 * 1024
# All PutRecords requests in flight together carry at most this much (one may always go).
# Ordinary events need ~0.2 MiB per full request, so this binds only for large events; it
# bounds what requests cost in memory (botocore holds each body about three times over:
# the data, its base64 and the JSON request).
PUT_MAX_BYTES_IN_FLIGHT = 4 * 1024 * 1024
# One record's data plus partition key may not exceed 1 MiB; bigger events go to the DLQ.
KINESIS_MAX_RECORD_BYTES = 1024 * 1024
# GetRecords returns at most 10,000 records per call (the tools and the emulator read with it).
KINESIS_GET_RECORDS_MAX = 10_000
# A PutRecords request that is not full is sent only while fewer than this many requests
# are in flight; full ones go at once. Most of the client's CPU is per call, not per record.
PUT_PARTIAL_REQUESTS = 1
# A PutRecords call that takes longer than this counts as congestion: the window shrinks
# toward what the stream answers within it (fewer, smaller requests while Kinesis is slow).
# AWS answers in tens of milliseconds; LocalStack's kinesis-mock, single-threaded, took
# 0.6 s to 5.8 s for 500 records as its shards filled, and queued concurrent calls behind
# each other until they timed out.
PUT_TARGET_LATENCY_S = 1.0
# The slowest a window cut for latency goes in one step (a quarter of what was in flight).
PUT_LATENCY_CUT_MIN = 0.25
# PutRecords' own read timeout, not the long poll's. A call that times out may have landed,
# so resending it is a duplicate by construction: this is long, and only the sink resends
# (botocore does not retry Kinesis calls; see app.kinesis_config).
PUT_RECORDS_READ_TIMEOUT_S = 60.0
# Start-up's DescribeStreamSummary retries (3 attempts) within this long, then gives up.
STARTUP_DESCRIBE_DEADLINE_S = 10.0

# --- SQS limits ---
# Receive, delete, change-visibility and send batches hold at most 10 entries.
SQS_MAX_BATCH_ENTRIES = 10
# A SendMessageBatch payload may not exceed 1 MiB in total (the 2025 limit; 256 KiB before).
# We stay under the old limit so the DLQ works on queues that still have it configured.
SQS_MAX_BATCH_BYTES = 256 * 1024
# A message (body plus attributes) may be up to 1 MiB; a queue's MaximumMessageSize may lower
# it to as little as 1 KiB. The daemon reads both queues' settings at start-up; this is the
# fallback when a queue does not say.
SQS_MAX_MESSAGE_BYTES = 1024 * 1024
SQS_MIN_MESSAGE_BYTES = 1024
# A message attribute value is capped by the message size; we keep `detail` short for readers.
DLQ_DETAIL_MAX_CHARS = 1024
# SQS keeps a message invisible for at most 12 h after its first receive.
SQS_MAX_VISIBILITY_S = 12 * 60 * 60
# Long polls wait at most 20 s.
SQS_MAX_WAIT_TIME_S = 20

# --- Memory budget (docs/design.md, "Memory") ---
# What a received message costs beyond its body: the Message, its receipt handle and
# attributes, its task and futures (a few hundred bytes each, rounded up).
MESSAGE_OVERHEAD_BYTES = 4 * 1024
# Receivers in a long poll reserve the largest bodies SQS may hand them (whole batches, within
# this share of the budget). Measured in `make bench` (1 MiB queues, 48 MiB): a share of 0.25
# allowed one full receive at a time and cut the drain to ~1,900 events/s, 0.5 to ~2,100;
# the whole budget keeps all four receivers' batches and the old rate (~2,800 on that VM). An
# idle poll's reservation returns within WAIT_TIME_SECONDS, and work waiting for room is
# served before the next reservation (the budget's waiters go in turn).
RECEIVE_BUDGET_SHARE = 1.0

# --- Shutdown ---
# On stop, a ReceiveMessage already under way may carry messages SQS has just hidden for us;
# cancelling it would leave them invisible for a whole visibility timeout. Receives get this
# long to land (their messages are then drained or released) before the rest are cut off.
RECEIVE_STOP_WINDOW_S = 1.0
# PutRecords calls still on the wire at shutdown get this long to answer before they are
# cancelled: botocore's own retries could otherwise hold the exit well past the grace.
SINK_CLOSE_TIMEOUT_S = 5.0

# --- Logs an operator reads (docs/operations.md, "The daemon's logs") ---
# Message ids kept per rejection reason for the next `rejections` line: enough to find a
# few of the dead letters with `dlq inspect`, few enough that a broken rollout rejecting
# thousands a second keeps no more than this per reason between two lines.
REJECTION_EXAMPLES = 3

# --- Heartbeat ---
# A submission is extended when half its visibility window is gone, so one lost or slow
# ChangeMessageVisibility call still leaves half a window of slack.
HEARTBEAT_FRACTION = 0.5
# How often the heartbeat looks at the in-flight set; well under any sane visibility timeout.
HEARTBEAT_TICK_S = 1.0
# Stop extending after this long in flight: SQS itself forbids more than 12 h.
HEARTBEAT_CAP_S = SQS_MAX_VISIBILITY_S - 60

# --- Retries (botocore's standard mode owns transport retries below these) ---
# First backoff and its ceiling for failed records, DLQ sends, deletes and receive errors.
RETRY_INITIAL_S = 0.05
RETRY_MAX_BACKOFF_S = 5.0
# A record keeps retrying while Kinesis fails, for up to an hour, with its message kept
# invisible by the heartbeat; after that the submission is released for redelivery rather
# than parked forever. The attempt cap is only a backstop against a zero-delay loop.
PUBLISH_RETRY_DEADLINE_S = 60 * 60
PUBLISH_RETRY_MAX_ATTEMPTS = 10_000
# Deletes and visibility changes are small and idempotent: a few tries, then the message is
# simply redelivered later, which is safe.
SQS_CALL_MAX_ATTEMPTS = 8
SQS_CALL_DEADLINE_S = 60.0
# Dead letters are not: by the time they wait, their submission's valid events are usually on
# the stream, and a redelivery publishes them again (and after maxReceiveCount redeliveries
# SQS's redrive moves the whole valid body to the DLQ). So letters retry while the DLQ fails
# for as long as the heartbeat can hold their message (counted from its receive); only then
# is it left for redelivery. The attempt cap is the records' backstop.
DLQ_RETRY_DEADLINE_S = HEARTBEAT_CAP_S

# --- Sink health ---
# After this many consecutive PutRecords calls that failed whole, Kinesis counts as down:
# receivers stop taking new work and /readyz reports not ready.
SINK_UNHEALTHY_AFTER_FAILED_CALLS = 3

# --- Garbage collection (cli) ---
# The cyclic collector's first-generation threshold once start-up is done (Python's is 700).
# The drain allocates a few dicts per message and record, most of which die by reference
# counting, so at 700 the collector runs often for nothing. Cyclic garbage still triggers it
# within 10,000 objects, so what it can hold stays a few MB.
GC_GEN0_THRESHOLD = 10_000

# --- Sensor authentication (docs/authentication.md) ---
# A message naming a key id the key set lacks makes the daemon read the key set again at once
# (a key added since the last refresh), at most this often: a flood of unknown key ids costs
# one GetSecretValue per interval, not one per message. Other messages with an unknown key
# while the interval runs are rejected (unknown_key) and can be redriven once the key is in.
AUTH_UNKNOWN_KEY_REFRESH_MIN_S = 30.0
# Device keys a key set keeps ready (signing.MacKey: two SHA-256 states), so that a message
# costs one HMAC, not two and their set-up: ~630 bytes each with the ids and the dict's slot
# (RSS), so at most ~2.5 MiB, outside the memory budget; emptied when full, which a fleet
# larger than this pays only as one key derivation again per message.
AUTH_DEVICE_KEY_CACHE_ENTRIES = 4_096
# After a failed refresh (the last good key set kept), the next try comes this soon at most,
# rather than a whole AUTH_KEYS_REFRESH_SECONDS later.
AUTH_REFRESH_RETRY_S = 30.0

# --- Ids ---
# Namespace for the UUIDv5 event ids: uuid5(NAMESPACE, f"{device_id}:{submission_id}:{sequence}").
# Fixed forever: changing it would change every event id and break consumers' dedup.
EVENT_ID_NAMESPACE = "6f1c9a64-5f3e-4b8e-9a52-3d2f0e7c1b10"
