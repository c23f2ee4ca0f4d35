"""Training algorithms as pure tensor functions: losses and estimators, one module per family.

`reductions` holds the masked sums and means every loss reduces through; `sft` the supervised
token-mean cross-entropy. Trainers in `trainer/methods` pick these by name and never inline a loss.
"""
