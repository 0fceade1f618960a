from .hooks import TIDHook
from .trainer import TIDTrainer, build_evaluator

__all__ = ["TIDHook", "TIDTrainer", "build_evaluator"]
