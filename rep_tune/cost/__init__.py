"""Cost model: analytic counts -> latency / memory / energy of a REP training iteration (no torch).

    predict(config, profile) -> Cost        each figure with its source (predicted | estimated),
                                            latency = mean over the config's task schedule
    predict_deployed(config, profile) -> Cost   the same knobs on the profile's deployment workload
    verdict(cost, budgets, margin) -> Verdict
    check(config, profile) -> (Cost, Verdict)   predicted at the budget's batch size
    calibrate.fit(profile) -> DeviceProfile     efficiency factors from timed block runs
    work.Work                                   the value type all arithmetic is written in
"""
from rep_tune.cost.deploy import MappingError, map_to_deployment, predict_deployed
from rep_tune.cost.model import TaskSchedule, predict, task_schedule
from rep_tune.cost.verdict import BudgetCheck, Verdict, check, verdict
from rep_tune.cost.work import Numerics, Work

__all__ = ["BudgetCheck", "MappingError", "Numerics", "TaskSchedule", "Verdict", "Work", "check",
           "map_to_deployment", "predict", "predict_deployed", "task_schedule", "verdict"]
