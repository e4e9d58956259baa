"""The reranker: its spec and loader, the scoring actor, and what feeds it (features, micro-batches, fast paths, quarantine)."""
