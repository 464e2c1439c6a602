"""Django-free parts of the job spine: the Reporter protocol, the selftest, resource probes."""
