"""Dataset builder: raw doctor–patient dialogues → a clean CMtMedQA-style training set.

One module per step (normalize, deid, rewrite, kg_check, screen, departments, split), chained
with caching and resume by `chain.py` (`zhongjing build`).
"""
