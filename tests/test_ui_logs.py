"""Long stages that log from plain loggers (teacher distillation, the coreset) show in the
Prefect UI, in the log of the cell's task run."""

from __future__ import annotations

import logging
import time

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
from prefect.context import TaskRunContext

from flows.benchmark import UI_LOGGERS
from tasks.runtime.ui_logs import shown_in_ui


def test_distillation_and_coreset_lines_reach_the_task_run_log(prefect_api):
    distill = logging.getLogger("tasks.models.efficientad.teacher")
    coreset = logging.getLogger("tasks.models.patchcore.coreset")
    parent = logging.getLogger(UI_LOGGERS[0])
    assert distill.name.startswith(parent.name) and coreset.name.startswith(parent.name)
    level_before = parent.level

    @task
    def cell():
        with shown_in_ui(*UI_LOGGERS):
            distill.info("teacher distillation step 25/150 loss 0.412 (9 s)")
            coreset.info("coreset 17600/176000 patches (10%), 21 s")
        coreset.info("a line after the cell")
        return TaskRunContext.get().task_run.id

    @flow
    def one_cell():
        return cell()

    task_run_id = one_cell()
    for handler in logging.getLogger("prefect.extra").handlers:
        handler.flush()
    with get_client(sync_client=True) as client:
        for _ in range(40):  # the API writes logs in batches
            logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])))
            if len(logs) >= 2:
                break
            time.sleep(0.5)
    messages = [log.message for log in logs]
    assert "teacher distillation step 25/150 loss 0.412 (9 s)" in messages
    assert "coreset 17600/176000 patches (10%), 21 s" in messages
    assert "a line after the cell" not in messages
    assert parent.level == level_before
