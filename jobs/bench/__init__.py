"""The throughput benchmark behind `python -m jobs.benchmark`: pairs (`data`), the scoring methods it times
(`methods`), random-weight models and FLOP arithmetic (`models`), one run (`run`) and sweeps (`sweep`).

It loads models and subclasses the rerank actor to time it from inside, so it lives with the jobs rather
than in the pipelines layer.
"""
