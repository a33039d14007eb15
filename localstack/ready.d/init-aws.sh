#!/usr/bin/env bash
# LocalStack READY hook: the resources event-processor works on.
#
#   SQS queue  $QUEUE_NAME (submissions), redriving to $DLQ_NAME after $MAX_RECEIVE_COUNT receives
#   SQS queue  $DLQ_NAME (submissions-dlq), keeping messages $DLQ_RETENTION_SECONDS (14 days)
#   Kinesis    $STREAM_NAME (events), $SHARD_COUNT shards (2)
#   Secret     $AUTH_KEYS_SECRET_NAME (event-processor/sensor-keys): the sensors' key set
#              (docs/authentication.md), one fresh 32-byte master key, made once
#
# FIFO=true: both queues are FIFO instead (SQS requires a FIFO queue's DLQ to be FIFO), named
# $QUEUE_NAME.fifo and $DLQ_NAME.fifo (a name that ends in .fifo already is kept), without
# content-based deduplication: every sender gives its own deduplication id. A queue's kind is
# fixed when it is made, so switching needs new names or a fresh LocalStack. Unset or empty:
# standard queues (a name ending in .fifo is then an error).
#
# Idempotent: what exists is kept, attributes are set to the values above on every run (so a
# changed MAX_RECEIVE_COUNT is applied), a stream that exists keeps its shards (a mismatch is
# reported, not changed), a key set secret that exists keeps its keys. Runs with `awslocal`
# (inside LocalStack) or any `awslocal` on PATH that takes AWS CLI arguments. Exits 2 on an
# invalid setting, non-zero if a call fails.
set -euo pipefail

QUEUE_NAME="${QUEUE_NAME:-submissions}"
DLQ_NAME="${DLQ_NAME:-submissions-dlq}"
STREAM_NAME="${STREAM_NAME:-events}"
SHARD_COUNT="${SHARD_COUNT:-2}"
MAX_RECEIVE_COUNT="${MAX_RECEIVE_COUNT:-5}"
# SQS's maximum: dead letters should outlive the source queue's messages (4 days by default).
DLQ_RETENTION_SECONDS="${DLQ_RETENTION_SECONDS:-1209600}"
STREAM_ACTIVE_TIMEOUT_SECONDS="${STREAM_ACTIVE_TIMEOUT_SECONDS:-60}"
AUTH_KEYS_SECRET_NAME="${AUTH_KEYS_SECRET_NAME:-event-processor/sensor-keys}"
FIFO="${FIFO:-}"

# LocalStack keeps resources per region: use the one the daemon and the fleet use.
export AWS_DEFAULT_REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-eu-west-1}}"
# LocalStack takes any credentials; "test" is its default account, 000000000000.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"

log() {
    printf 'init-aws: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 2
}

# require NAME VALUE REGEX WHAT: stop with a message naming the setting unless VALUE matches.
require() {
    [[ $2 =~ $3 ]] || die "$1='$2' is not $4"
}

require FIFO "$FIFO" '^(true)?$' 'true, or empty for standard queues'
queue_kind='{}'
if [[ -n $FIFO ]]; then
    QUEUE_NAME="${QUEUE_NAME%.fifo}.fifo"
    DLQ_NAME="${DLQ_NAME%.fifo}.fifo"
    # A FIFO queue's name: up to 80 characters, ".fifo" included.
    name_pattern='^[A-Za-z0-9_-]{1,75}\.fifo$'
    name_what='a FIFO queue name (1-75 of A-Z a-z 0-9 _ -, then .fifo)'
    queue_kind='{"FifoQueue": "true"}'
else
    name_pattern='^[A-Za-z0-9_-]{1,80}$'
    name_what='a queue name (1-80 of A-Z a-z 0-9 _ -; a name ending in .fifo needs FIFO=true)'
fi
require QUEUE_NAME "$QUEUE_NAME" "$name_pattern" "$name_what"
require DLQ_NAME "$DLQ_NAME" "$name_pattern" "$name_what"
require STREAM_NAME "$STREAM_NAME" '^[A-Za-z0-9_.-]{1,128}$' 'a stream name (1-128 of A-Z a-z 0-9 _ . -)'
require SHARD_COUNT "$SHARD_COUNT" '^[1-9][0-9]{0,3}$' 'a shard count (1-9999)'
require MAX_RECEIVE_COUNT "$MAX_RECEIVE_COUNT" '^([1-9][0-9]{0,2}|1000)$' 'a maxReceiveCount (1-1000)'
require DLQ_RETENTION_SECONDS "$DLQ_RETENTION_SECONDS" '^[1-9][0-9]{1,6}$' 'a number of seconds'
((DLQ_RETENTION_SECONDS >= 60 && DLQ_RETENTION_SECONDS <= 1209600)) ||
    die "DLQ_RETENTION_SECONDS='$DLQ_RETENTION_SECONDS' is not in 60-1209600"
require STREAM_ACTIVE_TIMEOUT_SECONDS "$STREAM_ACTIVE_TIMEOUT_SECONDS" '^[1-9][0-9]{0,3}$' 'a number of seconds'
require AUTH_KEYS_SECRET_NAME "$AUTH_KEYS_SECRET_NAME" '^[A-Za-z0-9/_+=.@-]{1,512}$' \
    'a secret name (1-512 of A-Z a-z 0-9 / _ + = . @ -)'

# --- SQS -------------------------------------------------------------------------------------
# CreateQueue without attributes returns the URL of a queue that already exists (it only fails
# when asked for attributes that differ), so attributes are set separately, on every run.
# FifoQueue can only be given at creation; CreateQueue with the same kind still returns the
# queue that exists.
dlq_url=$(awslocal sqs create-queue --queue-name "$DLQ_NAME" --attributes "$queue_kind" \
    --query QueueUrl --output text)
awslocal sqs set-queue-attributes --queue-url "$dlq_url" \
    --attributes "{\"MessageRetentionPeriod\": \"$DLQ_RETENTION_SECONDS\"}"
dlq_arn=$(awslocal sqs get-queue-attributes --queue-url "$dlq_url" \
    --attribute-names QueueArn --query Attributes.QueueArn --output text)

queue_url=$(awslocal sqs create-queue --queue-name "$QUEUE_NAME" --attributes "$queue_kind" \
    --query QueueUrl --output text)
redrive_policy="{\"deadLetterTargetArn\": \"$dlq_arn\", \"maxReceiveCount\": $MAX_RECEIVE_COUNT}"
# --attributes is a JSON object of strings: the policy (JSON itself) goes in with quotes escaped.
awslocal sqs set-queue-attributes --queue-url "$queue_url" \
    --attributes "{\"RedrivePolicy\": \"${redrive_policy//\"/\\\"}\"}"
if [[ -n $FIFO ]]; then
    for url in "$dlq_url" "$queue_url"; do
        awslocal sqs set-queue-attributes --queue-url "$url" \
            --attributes '{"ContentBasedDeduplication": "false"}'
    done
fi
log "queue $QUEUE_NAME ($queue_url) redrives to $DLQ_NAME after $MAX_RECEIVE_COUNT receives${FIFO:+ (both FIFO)}"

# --- Kinesis ---------------------------------------------------------------------------------
# A long read timeout: LocalStack may fetch its Kinesis backend on this first Kinesis call.
if ! create_error=$(awslocal kinesis create-stream --stream-name "$STREAM_NAME" \
    --shard-count "$SHARD_COUNT" --cli-read-timeout 300 2>&1 >/dev/null); then
    # The one failure that means "already there" (or still being created by an earlier run).
    if [[ $create_error != *ResourceInUseException* ]]; then
        log "error: create-stream $STREAM_NAME failed: $create_error"
        exit 1
    fi
    log "stream $STREAM_NAME exists: kept as it is"
fi

# Poll rather than `kinesis wait stream-exists`, whose first retry comes after 10 s.
deadline=$((SECONDS + STREAM_ACTIVE_TIMEOUT_SECONDS))
while :; do
    summary=$(awslocal kinesis describe-stream-summary --stream-name "$STREAM_NAME" \
        --query 'StreamDescriptionSummary.[StreamStatus, OpenShardCount]' --output text)
    read -r status open_shards <<<"$summary"
    [[ $status == ACTIVE ]] && break
    if ((SECONDS >= deadline)); then
        log "error: stream $STREAM_NAME still $status after $STREAM_ACTIVE_TIMEOUT_SECONDS s"
        exit 1
    fi
    sleep 0.5
done
if [[ $open_shards != "$SHARD_COUNT" ]]; then
    log "warning: stream $STREAM_NAME has $open_shards open shards, not SHARD_COUNT=$SHARD_COUNT"
fi
log "stream $STREAM_NAME is ACTIVE with $open_shards open shards"

# --- Secrets Manager -------------------------------------------------------------------------
# The key set the daemon checks signatures with and the fleet signs with. Made once: a rerun
# must not change the key that both already use. The key reaches the AWS CLI on stdin (printf
# is a builtin: no command line that ps could show) and is never logged.
if ! describe_error=$(awslocal secretsmanager describe-secret \
    --secret-id "$AUTH_KEYS_SECRET_NAME" 2>&1 >/dev/null); then
    if [[ $describe_error != *ResourceNotFoundException* ]]; then
        log "error: describe-secret $AUTH_KEYS_SECRET_NAME failed: $describe_error"
        exit 1
    fi
    # As `event-processor keys new` names keys: the date and 6 hex digits.
    key_id="$(date -u +%Y-%m-%d)-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
    master_key=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
    if create_error=$(printf '{"keys": {"%s": "%s"}, "revoked_devices": []}' "$key_id" "$master_key" |
        awslocal secretsmanager create-secret --name "$AUTH_KEYS_SECRET_NAME" \
            --description "event-processor: the sensors' key set (docs/authentication.md)" \
            --secret-string file:///dev/stdin 2>&1 >/dev/null); then
        log "secret $AUTH_KEYS_SECRET_NAME created: a key set with master key $key_id"
    elif [[ $create_error == *ResourceExistsException* ]]; then
        log "secret $AUTH_KEYS_SECRET_NAME exists: kept as it is"  # made by a hook running alongside
    else
        log "error: create-secret $AUTH_KEYS_SECRET_NAME failed: ${create_error//"$master_key"/<key>}"
        exit 1
    fi
    unset master_key
else
    log "secret $AUTH_KEYS_SECRET_NAME exists: kept as it is"
fi
log "ready"
