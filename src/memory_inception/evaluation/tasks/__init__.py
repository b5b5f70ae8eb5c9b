"""The evaluation tasks: one module per task family (personality, dialogue, persistence, capability,
KV storage, reasoning)."""
