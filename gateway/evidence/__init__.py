"""Evidence for choosing routes: what each arm of a shadowed request measured, kept in an embedded SQLite
file (with a retention and a size bound).

May import: ``gateway.config`` and ``routing`` (policy replay decides with it).
"""
