from .hooks import TIDHook
from .trainer import FiniteLossAMPTrainer, FiniteLossSimpleTrainer, TIDTrainer, build_evaluator

__all__ = ["FiniteLossAMPTrainer", "FiniteLossSimpleTrainer", "TIDHook", "TIDTrainer", "build_evaluator"]
