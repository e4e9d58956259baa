"""Run bookkeeping shared by the jobs: identity, the one-driver lease, the scoring checkpoint, progress, model access."""
