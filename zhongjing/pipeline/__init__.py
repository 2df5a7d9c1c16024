"""The one-command chain `zhongjing pipeline` (init-model → build → pt → sft → generate → rank → rm → ppo → eval).

    stages.py   one Stage record per stage (adding a stage = one row) and how the stages connect (Wiring)
    run.py      planning and running the stages (the CLI entry point)
    rank.py     the rank stage, which runs inside the pipeline
    state.py    what the pipeline remembers between runs (a key per stage; identity in zhongjing.model.identity)
    report.py   each stage's summary and the end-of-run table
"""
