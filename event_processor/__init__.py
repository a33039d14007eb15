"""event-processor: SQS sensor submissions in, validated and ordered Kinesis records out."""

__version__ = "0.2.0"
