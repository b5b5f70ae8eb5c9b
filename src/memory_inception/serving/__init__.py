"""The OpenAI-compatible HTTP server: `app` (create_app, routes, run_server) over `service` (engine-independent
logic), `schemas`, `gate`, `bank_store`, `session_store`, `streaming`, and the engines behind `protocol.Engine`:
`hf_engine` (transformers) and `vllm_engine` (vLLM)."""
