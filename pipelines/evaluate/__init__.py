"""Evaluation: trec_eval metrics per query, runs compared with paired tests, the report."""
