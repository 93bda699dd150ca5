"""The parts of `clipo.report`: reading multirun folders (`runs`), tables (`tables`), figures (`plots`)."""

from clipo.multirun.runs import NoRunsError, find_runs, load_history, load_runs
from clipo.multirun.tables import choice_columns, markdown_table, summarize

__all__ = ["NoRunsError", "choice_columns", "find_runs", "load_history", "load_runs", "markdown_table", "summarize"]
