"""Offline graders for the reasoning benchmarks (HARDMath, PHYSICS): final answers, numeric and symbolic checks."""

from memory_inception.datasets.latex_spans import (
    extract_final_answer,
    find_boxed,
    split_top_level,
    strip_boxed,
)
from memory_inception.evaluation.grading.graders import (
    Grade,
    deadline,
    equivalent,
    grade,
    grade_hardmath,
    grade_physics,
)

__all__ = [
    "Grade", "deadline", "equivalent", "extract_final_answer", "find_boxed", "grade", "grade_hardmath",
    "grade_physics", "split_top_level", "strip_boxed",
]
