"""Job kinds of training: finetune."""
