"""Training: the YAML `TIDTrainer` and the LazyConfig functions share `defaults`."""
from .defaults import build_evaluator, setup_cfg, student_cfg
from .hooks import TeacherEvalHook
from .train_loop import FiniteLossAMPTrainer, FiniteLossSimpleTrainer
from .trainer import TIDTrainer

__all__ = [
    "FiniteLossAMPTrainer",
    "FiniteLossSimpleTrainer",
    "TIDTrainer",
    "TeacherEvalHook",
    "build_evaluator",
    "setup_cfg",
    "student_cfg",
]
