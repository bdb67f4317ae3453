"""Sweeps over the workers: specs, the job graph on Ray, recording, metrics and the CLI."""
