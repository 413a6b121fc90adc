"""xkd: experiential knowledge distillation (X-KD) for language models."""

__version__ = "0.1.0"
