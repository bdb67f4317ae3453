"""Pure compute: training regimes, circuit discovery, evaluation, profiling.
Functions take tensors and settings and return values; nothing here imports Ray or MLflow."""
