"""The nightly refresh: embed, retrieve, rerank with a score cache, publish the run."""
