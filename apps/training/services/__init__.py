"""Writes of training, one module per area: datasets (`dataset`), synthetic data (`synth`),
fine-tuning runs (`finetune`)."""
