"""certainty-gateway: an OpenAI-compatible gateway that rates its local model's certainty."""

__version__ = "0.1.0"
