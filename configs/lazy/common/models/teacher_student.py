"""A generic lazy TeacherStudent, the twin of a YAML config with MODEL.META_ARCHITECTURE
"TeacherStudent": any list of methods, each starting from its MODEL.DISTILL.<NAME> defaults, built
from the layout (channels, strides) of the instantiated models."""
from detectron2.config import LazyCall as L

from tid_d2.distill import distillers_builder
from tid_d2.modeling.teacher_student import TeacherStudent, load_teacher


def teacher_student(student, teacher, teacher_weights: str, methods=("TID",), **method_args):
    """
    A lazy TeacherStudent of the lazy detectors `student` and `teacher`; the teacher is loaded
    strictly from `teacher_weights` when the model is instantiated. `method_args`: `warmup_iters`,
    `log_period`, `feature_norm` and `adapter` (MODEL.DISTILL.WARMUP_ITERS / LOG_PERIOD /
    FEATURE_NORM / ADAPTER, all methods) and per-method overrides of their MODEL.DISTILL.<NAME> keys
    in lower case, by lower-case method name, e.g. `tid=dict(alpha=1.0, vis_period=100)`; edit them later as
    `model.distillers.<name>` / `model.distillers.warmup_iters`.
    """
    return L(TeacherStudent)(
        student=student,
        teacher=L(load_teacher)(teacher=teacher, weights=teacher_weights),
        distillers=L(distillers_builder)(methods=list(methods), **method_args),
    )
