"""tamperaudit: measure how cheaply fine-tuning removes a chat model's refusals."""

__version__ = "0.2.0"
