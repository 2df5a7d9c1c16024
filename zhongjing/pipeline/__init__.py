"""The one-command chain `zhongjing pipeline` (init-model → build → pt → sft → generate → rank → rm → ppo → eval).

    run.py      planning and running the stages (the CLI entry point)
    wiring.py   how the stages connect: outputs, what each reads, each stage's config
    state.py    what the pipeline remembers between runs (keys, fingerprints)
    report.py   the end-of-run summary
"""
