"""Engines: the local transformers + PEFT engine, its batching worker, the remote vLLM engine."""
