"""Job kinds of training: synth."""
