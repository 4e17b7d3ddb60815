"""Pure-PyTorch models: flat ResNets, policies, the BlockDrop executor, FLOPs and artifacts."""

from models.artifacts import load_artifact, save_artifact

__all__ = ["load_artifact", "save_artifact"]
