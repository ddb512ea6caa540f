"""Policy routing: pure functions from a request's features to a decision. Never imports ``gateway``."""

from routing.decision import Decision, RequestFeatures, Target, TargetKind
from routing.table import RoutingTable, decide

__all__ = ["Decision", "RequestFeatures", "RoutingTable", "Target", "TargetKind", "decide"]
