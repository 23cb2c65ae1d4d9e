"""Fine-tuning: the one training loop (loop), base models and tokenizers from local paths (models), and the
methods that configure it (methods/: full, freeze, peft adapters)."""
