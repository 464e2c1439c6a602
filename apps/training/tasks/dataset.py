"""Job kinds of training: dataset."""
