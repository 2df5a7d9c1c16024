"""Annotation tool: doctors rank K answers per turn, two annotators per item, experts adjudicate.

`rubric` and `agreement` are dependency-free and safe to import from any stage (the eval judge
uses `rubric`); the web app (`app`, `admin`, `web`) needs the `web` extra.
"""
