"""Input tables from the files users have: Parquet, JSON Lines, CSV, and BEIR directories."""
