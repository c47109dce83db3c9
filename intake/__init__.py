"""The edges: HTTP API, request schemas, org and CSV file readers."""
