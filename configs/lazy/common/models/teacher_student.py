"""TeacherStudent with TID for LazyConfigs: the twin of a YAML config with MODEL.META_ARCHITECTURE
"TeacherStudent" and MODEL.DISTILL.METHODS ["TID"] (TID's keyword defaults are MODEL.TID's)."""
from detectron2.config import LazyCall as L

from tid_d2.distill import distiller_dict
from tid_d2.distill.tid import TID
from tid_d2.modeling.teacher_student import TeacherStudent, load_teacher


def tid_teacher_student(student, teacher, teacher_weights: str, student_channels: int, teacher_channels: int):
    """A lazy TeacherStudent: `student` and `teacher` are lazy detectors; the teacher is loaded
    strictly from `teacher_weights` when the model is instantiated. Override TID's arguments as
    `model.distillers.tid.<arg>` (e.g. alpha, tasks, threshold_mode)."""
    return L(TeacherStudent)(
        student=student,
        teacher=L(load_teacher)(teacher=teacher, weights=teacher_weights),
        distillers=L(distiller_dict)(
            tid=L(TID)(teacher_channels=teacher_channels, student_channels=student_channels)
        ),
        vis_period=0,  # MODEL.TID.VIS_PERIOD
    )
