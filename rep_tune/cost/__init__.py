"""Cost model: analytic counts -> latency / memory / energy of a REP training iteration (no torch).

    predict(config, profile) -> Cost        each figure with its source (predicted | estimated)
    verdict(cost, budgets, margin) -> Verdict
    check(config, profile) -> (Cost, Verdict)   predicted at the budget's batch size
    calibrate.fit(profile) -> DeviceProfile     efficiency factors from timed block runs
"""
from rep_tune.cost.model import predict
from rep_tune.cost.verdict import BudgetCheck, Verdict, check, verdict

__all__ = ["BudgetCheck", "Verdict", "check", "predict", "verdict"]
