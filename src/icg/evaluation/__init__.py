"""Evaluation: paper tables, baselines and reports."""
