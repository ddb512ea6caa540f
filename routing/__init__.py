"""Policy routing: pure functions from a request's features to a decision. Never imports ``gateway``."""

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
