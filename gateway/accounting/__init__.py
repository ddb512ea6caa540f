"""What each request costs and how long it took: prices, usage estimates, and the per-request ledger.

May import: ``gateway.config``, ``gateway.errors``, ``gateway.metrics``, ``gateway.protocol``, ``routing``.
"""
