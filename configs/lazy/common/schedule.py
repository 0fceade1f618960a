"""Step LR schedules as the YAML configs define them (SOLVER.STEPS/MAX_ITER/WARMUP_*)."""
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


def warmup_multi_step(max_iter, steps, warmup_iters=500, warmup_factor=0.001, gamma=0.1):
    """LR multiplier: linear warm-up over `warmup_iters`, then x `gamma` at each of `steps`.

    Milestones are fractions of the run (as in Detectron2), so overriding train.max_iter scales
    the whole schedule."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**k for k in range(len(steps) + 1)],
            milestones=list(steps),
            num_updates=max_iter,
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


lr_multiplier_1x = warmup_multi_step(90000, (60000, 80000))
lr_multiplier_2x = warmup_multi_step(180000, (120000, 160000))
