"""Converters between hf_gpt and other GPT checkpoint formats (installed as hf_gpt.conversion)."""
