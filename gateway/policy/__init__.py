"""Policies: the schema, the folder loader with hot reload, and the decision function."""

from gateway.policy.schema import Action, Policy, decide, policy_confidence
from gateway.policy.store import PolicySet, PolicyStore, load_policies

__all__ = [
    "Action",
    "Policy",
    "PolicySet",
    "PolicyStore",
    "decide",
    "load_policies",
    "policy_confidence",
]
