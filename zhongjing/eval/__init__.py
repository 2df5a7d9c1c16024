"""Evaluation: the paper's pairwise judging (both orders, bootstrap intervals), safety, single-model
metrics, multiple-choice exams and a Markdown/HTML/JSON report. Entry point: `zhongjing eval` (run.py)."""
