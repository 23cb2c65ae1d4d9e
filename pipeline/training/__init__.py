"""Fine-tuning: the one training loop (loop), base models and tokenizers from local paths (models), where training
starts: model.base, a registered parent or the champion (warm_start), and the methods that configure it (methods/:
full, freeze, peft adapters)."""
