"""Several vLLM replicas behind one gateway: where they are, whether they answer, and which one serves a request.

The replica set comes from ``vllm.url``, ``vllm.replicas`` or DNS (``vllm.discovery``: every address a name
resolves to, re-resolved; a replica that leaves is drained, a failed resolution keeps the set last known).
Each replica has its own adapter residency (an :class:`gateway.adapters.manager.AdapterManager`), its
requests in flight and its health: probed on ``/health``, ejected after ``eject_after`` consecutive failures
of probes or requests, returned by the next probe that succeeds.

One rule chooses a replica for a request (:mod:`.placement`): an adapter goes where it is resident, the
least loaded of those; else to the least loaded replica with a free slot, where it is loaded. A hot adapter
spreads to one more replica when every holder is busier than the least loaded replica by a margin (bounded
by its ``max_replicas``), loaded there in the background, so no request waits for a load while a replica
holds the adapter. Base-model requests go to the least loaded replica.

Declared state is reconciled (:mod:`.fleet`): pinned adapters on every healthy replica, ``min_replicas``
adapters on that many, at start, on a replica that appears, and at once on one that restarted (it came back
after an ejection, or its ``/v1/models`` no longer lists an adapter the gateway loaded there).

May import: ``gateway.adapters``, ``gateway.config``, ``gateway.errors``, ``gateway.metrics``,
``gateway.upstream``.
"""
