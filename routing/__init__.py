"""Policy routing: pure functions from a request's features to a decision.

May import: nothing of ``gateway`` (and no I/O): the policy is testable in microseconds, and the same
engine decides requests, explains them and checks configurations.
"""

from routing.decision import NO_CAPS, Caps, Decision, RagOptions, RequestFeatures, Target, TargetKind
from routing.policy import Policy, compile_policy, target_resolver
from routing.table import RoutingTable, decide, explain

__all__ = [
    "NO_CAPS",
    "Caps",
    "Decision",
    "Policy",
    "RagOptions",
    "RequestFeatures",
    "RoutingTable",
    "Target",
    "TargetKind",
    "compile_policy",
    "decide",
    "explain",
    "target_resolver",
]
