"""Pure ML for rsir: networks, losses, datasets and splits, training loops, metrics, checkpoints.

Imports neither `indexer` nor `service`.
"""
