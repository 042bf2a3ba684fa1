"""An OpenAI-compatible gateway: client keys instead of the LLM key, streaming with keepalives,
retries with backoff, one structured log line and metrics per request. See docs/gateway.md."""
