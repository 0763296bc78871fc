"""Task plugins. Importing this package registers the built-in tasks; third-party tasks
register through the ``prefix_bench.tasks`` entry-point group."""

from tasks import e2e, glue, lm_eval_tasks  # noqa: F401  (registration)
from tasks.base import TASKS, DataSettings, Example, Task, register_task, task_facts
from tasks.lm_eval_any import cell_task, task_for

__all__ = ["TASKS", "DataSettings", "Example", "Task", "cell_task", "register_task", "task_facts", "task_for"]
