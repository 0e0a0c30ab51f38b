"""Trained scene classifiers: DDRL-AM, pairwise-consistency learning (PCL), LAFE and plain ResNets.

Import the submodules you need (`registry`, `training`, `evaluation`, `inference`); this package
does no work at import time.
"""
