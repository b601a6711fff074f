"""Tasks as objects (`Task`): the built-in four, registered by name; `get_task` is the way in."""

from sonocad.tasks.base import EvaluationResult, Predicted, Task, predict_samples
from sonocad.tasks.classification import ClassificationTask
from sonocad.tasks.detection import DetectionTask
from sonocad.tasks.multitask import MultitaskTask
from sonocad.tasks.registry import get_task, register_task, task_names
from sonocad.tasks.segmentation import SegmentationTask

for _task in (SegmentationTask(), ClassificationTask(), MultitaskTask(), DetectionTask()):
    register_task(_task)

__all__ = ["EvaluationResult", "Predicted", "Task", "get_task", "predict_samples",
           "register_task", "task_names"]
