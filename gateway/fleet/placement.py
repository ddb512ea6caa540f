"""Which replica serves a request: residency first, then load.

For an adapter, among the replicas that may take a request (healthy, not draining, not in a back-off for it):

1. the replicas where it is loaded, the least loaded of them (one still loading it is not chosen while
   another has it loaded);
2. else a replica loading it already (the request waits for that load, never starts a second one);
3. else the least loaded replica with a free adapter slot, then one where an idle adapter can make room,
   then any (the load there waits for a slot, as on one server). Among replicas whose loads are within the
   margin below of the lightest, the adapter's own first choice wins: each adapter ranks the replicas by a
   hash of both names (rendezvous hashing), so every gateway sharing the replicas puts a cold adapter on the
   same one, and different adapters land on different replicas;
4. a hot adapter spreads: when even the least loaded holder has ``SPREAD_MARGIN`` more requests in flight
   than the least loaded replica with a free slot that does not hold it, that replica (chosen as in 3) is
   named to load it in the background, while the request itself still goes to a holder. Pinned adapters are everywhere
   already and never spread here; ``max_replicas`` bounds the others.

A base-model request goes to the least loaded replica. Ties are broken by a turn that moves on with every
choice, so an idle fleet still shares requests. Every candidate is looked at: fleets are a handful of
replicas, and the gateway sees its own requests in flight exactly, so sampling two (power of two choices)
would only add noise.

The margin: one more request in flight on a replica is one more sequence in vLLM's batch; two more on every
holder than on the lightest replica means the holders are the bottleneck for that adapter, while a load costs
one slot and 15-80 ms of the other replica's time (measured on CPU). Spreading only to a free slot means it
never evicts, so two hot adapters cannot push each other out.

:class:`RoundRobin` ignores residency and load: what a router without LoRA affinity does. It exists as the
baseline ``bench/fleet.py`` measures residency-first placement against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.fleet.replica import Replica

SPREAD_MARGIN = 2


@dataclass(frozen=True, slots=True)
class Choice:
    replica: Replica
    spread_to: Replica | None = None  # load the adapter there too, in the background


class Placement(Protocol):
    def choose(self, replicas: Sequence[Replica], adapter: str | None, bound: int | None) -> Choice | None:
        """A replica among ``replicas`` (never empty) for a request for ``adapter`` (None: the base model),
        which may be resident on at most ``bound`` replicas (None: no bound; 0: never spread on demand).
        None when every candidate is in a back-off for the adapter."""
        ...


def rank(adapter: str, replica: str) -> int:
    """How much ``adapter`` prefers ``replica``: the same in every process (Python's own hash is salted)."""
    return int.from_bytes(hashlib.blake2b(f"{adapter}\0{replica}".encode(), digest_size=8).digest(), "big")


class ResidencyFirst:
    """The placement rule of the module docstring."""

    def __init__(self) -> None:
        self._turn = 0

    def _home(self, adapter: str, replicas: Sequence[Replica]) -> Replica:
        """The adapter's first choice among ``replicas``, unless it is busier than the lightest by the margin."""
        preferred = max(replicas, key=lambda r: rank(adapter, r.name))
        lightest = min(r.in_flight for r in replicas)
        if preferred.in_flight < lightest + SPREAD_MARGIN:
            return preferred
        return self._least_loaded(replicas)

    def _least_loaded(self, replicas: Sequence[Replica]) -> Replica:
        count = len(replicas)
        if count == 1:
            return replicas[0]
        start = self._turn % count
        self._turn += 1
        best = replicas[start]
        for offset in range(1, count):
            candidate = replicas[(start + offset) % count]
            if candidate.in_flight < best.in_flight:
                best = candidate
        return best

    def choose(self, replicas: Sequence[Replica], adapter: str | None, bound: int | None) -> Choice | None:
        if adapter is None:
            return Choice(self._least_loaded(replicas))
        allowed = [r for r in replicas if r.adapters.blocked(adapter) is None]
        if not allowed:
            return None
        resident = [r for r in allowed if r.adapters.is_resident(adapter)]
        if resident:
            best = self._least_loaded(resident)
            spread = None
            holders = sum(1 for r in replicas if r.adapters.holds(adapter))
            if bound is None or holders < bound:
                free = [r for r in allowed if not r.adapters.holds(adapter) and r.adapters.has_free_slot()]
                if free and best.in_flight >= min(r.in_flight for r in free) + SPREAD_MARGIN:
                    spread = self._home(adapter, free)
            return Choice(best, spread)
        loading = [r for r in allowed if r.adapters.holds(adapter)]
        if loading:  # wait for the load under way rather than start another
            return Choice(self._least_loaded(loading))
        free = [r for r in allowed if r.adapters.has_free_slot()]
        if free:
            return Choice(self._home(adapter, free))
        roomy = [r for r in allowed if r.adapters.can_make_room()]
        return Choice(self._home(adapter, roomy or allowed))


class RoundRobin:
    """Each request to the next replica in turn, wherever its adapter is: the baseline of ``bench/fleet.py``."""

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, replicas: Sequence[Replica], adapter: str | None, bound: int | None) -> Choice | None:
        replica = replicas[self._turn % len(replicas)]
        self._turn += 1
        return Choice(replica)
