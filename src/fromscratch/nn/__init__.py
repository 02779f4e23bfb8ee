"""Drop-in torch.nn modules whose gradients are the hand-derived ones in ``fromscratch.ops``."""
from .batch_norm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from .dropout import Dropout
from .layer_norm import LayerNorm
from .rms_norm import FusedAddRMSNorm, RMSNorm
from .swapping import SwapReport, patch_transformers, swap, unpatch_transformers, unswap
from .sync_batch_norm import SyncBatchNorm

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Dropout",
           "FusedAddRMSNorm", "LayerNorm", "RMSNorm", "SwapReport", "SyncBatchNorm",
           "patch_transformers", "swap", "unpatch_transformers", "unswap"]
