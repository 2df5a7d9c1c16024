"""Calling an OpenAI-compatible endpoint (client.py) and caching its answers on disk (cache.py).

Below everything that talks to an LLM over HTTP: the builder's rewrite step, eval's judge and answers, the
consultation package's patient simulator. Imports only errors/io.
"""
