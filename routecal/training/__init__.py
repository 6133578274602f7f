"""Training and prediction: optax/orbax training loop, the classification and language-model
tasks, checkpoints, and prediction of examples and tokens with their routing traces."""
