"""Data model (Dialogue, Document, Ranking), readers for real formats, and rendering to tokens."""

from zhongjing.data.schema import Dialogue, Document, Message, Ranking  # noqa: F401
