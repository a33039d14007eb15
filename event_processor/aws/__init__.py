"""The AWS transport: the client ports the pipeline depends on, the lean request path for the
hot calls, and botocore's model loader."""
