"""Job kinds of training, one module per area; importing this registers them all."""

from apps.training.tasks import dataset, evaluate, finetune, synth, try_it  # noqa: F401
