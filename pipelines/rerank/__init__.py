"""The offline rerank: validate ─► media ─► score ─► rank per query, and the resumable run around it."""
