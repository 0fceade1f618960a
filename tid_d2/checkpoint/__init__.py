"""Every weight read and write of this project: strict or checked loads that name the file and the
config key, student-only state dicts, and atomic checkpoint files."""
from .atomic import AtomicCheckpointer, atomic_write
from .loading import load_weights, read_error, student_state_dict

__all__ = ["AtomicCheckpointer", "atomic_write", "load_weights", "read_error", "student_state_dict"]
