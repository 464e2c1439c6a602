"""Pages of training, one module per area: datasets, synthetic data, runs."""
