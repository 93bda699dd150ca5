"""clipo: RLVR with contrastive learning in policy optimization (CLIPO)."""

__version__ = "0.1.0"
