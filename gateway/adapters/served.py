"""Which files each declared adapter is served from now: its own directory, or a version in the adapter store.

An adapter declared with ``store: NAME`` is served from the version the store's name ``NAME`` points at
(``.aliases/NAME.json``), or from a fixed ``version``. Resolving it fills in what the rest of the gateway
reads: ``path`` (the version's directory), ``served_path`` (the same as vLLM sees it) and ``version``, so
that :meth:`AdapterConfig.vllm_name` is ``NAME@VERSION``, the name vLLM loads it under. An adapter whose
name points nowhere yet (nothing pushed) keeps ``path`` None: requests for it are refused with
:func:`unresolved_reason` until a version is activated, and the gateway starts anyway.

:class:`ServedAdapters` keeps the resolution current: the gateway reads the store's names every
``adapter_store.watch_interval_s`` and hands a changed resolution to the fleet, which moves new requests to
the new version while those in flight finish on the old one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gateway.adapters.store import AdapterStore, StoreError
from gateway.config.model import AdapterConfig, AdapterStoreConfig

log = logging.getLogger("turnout.adapters")


def resolve(
    adapters: Mapping[str, AdapterConfig],
    store: AdapterStoreConfig,
    previous: Mapping[str, AdapterConfig] | None = None,
) -> dict[str, AdapterConfig]:
    """``adapters`` with every store adapter resolved to its version now. A name whose pointer cannot be
    read (a damaged file), or that names a version whose directory is not there yet (a store synced from object
    storage, where pointers may arrive before versions), keeps its ``previous`` resolution, and says so in the log."""
    if store.path is None or not any(spec.store is not None for spec in adapters.values()):
        return dict(adapters)
    root = AdapterStore(store.path)
    served: dict[str, AdapterConfig] = {}
    for name, spec in adapters.items():
        if spec.store is None:
            served[name] = spec
            continue
        version = spec.version
        if version is None:
            try:
                alias = root.alias(spec.store)
            except StoreError as exc:
                kept = (previous or {}).get(name)
                log.warning("adapter %s: %s; %s", name, exc, "keeping its version" if kept else "not served")
                served[name] = kept if kept is not None else spec
                continue
            version = alias.current if alias is not None else None
        resolved = _at(spec, root, store.served_path, version)
        kept = (previous or {}).get(name)
        if resolved.path is None and kept is not None and kept.path is not None and spec.version is None:
            # the pointer names a version whose files have not arrived (a store synced from object storage)
            log.warning("adapter %s: version %s is not in the store yet; keeping %s", name, version, kept.version)
            resolved = kept
        served[name] = resolved
    return served


def _at(spec: AdapterConfig, root: AdapterStore, served_root: str | None, version: str | None) -> AdapterConfig:
    if version is None:
        return spec
    path = root.path_of(spec.store or "", version)
    if not path.is_dir():
        return spec.model_copy(update={"version": version, "path": None})
    served_path = None if served_root is None else f"{served_root.rstrip('/')}/{path.name}"
    return spec.model_copy(update={"version": version, "path": path, "served_path": served_path})


def unresolved_reason(name: str, spec: AdapterConfig) -> str:
    """Why the store adapter ``name`` cannot be served (its ``path`` is None after :func:`resolve`)."""
    where = "the adapter store"
    if spec.version is not None:
        return (
            f"adapter {name!r} is served from version {spec.version} of {spec.store!r}, which is not in {where} "
            f"(turnout adapters versions {spec.store})"
        )
    return (
        f"adapter {name!r} is served from {spec.store!r} in {where}, which has no active version yet "
        f"(turnout adapters push {spec.store} DIR)"
    )


class ServedAdapters:
    """The declared adapters and the versions they are served from, kept current by :meth:`refresh`."""

    def __init__(self, declared: Mapping[str, AdapterConfig], store: AdapterStoreConfig) -> None:
        self._declared = dict(declared)
        self._store = store
        self.current = resolve(declared, store)

    @property
    def store(self) -> AdapterStoreConfig:
        return self._store

    def watched(self) -> bool:
        """Some adapter follows a name in the store: its pointer is worth reading again."""
        return self._store.path is not None and any(
            spec.store is not None and spec.version is None for spec in self._declared.values()
        )

    def use(self, declared: Mapping[str, AdapterConfig], store: AdapterStoreConfig) -> dict[str, AdapterConfig]:
        """A reloaded configuration's adapters, resolved now."""
        self._declared, self._store = dict(declared), store
        self.current = resolve(declared, store, self.current)
        return self.current

    def refresh(self) -> dict[str, AdapterConfig] | None:
        """Read the store's names again: the new resolution when a version moved, else None."""
        fresh = resolve(self._declared, self._store, self.current)
        if fresh == self.current:
            return None
        for name, spec in fresh.items():
            before = self.current.get(name)
            if before is not None and before.version != spec.version:
                log.info("adapter %s now served from version %s (was %s)", name, spec.version, before.version)
        self.current = fresh
        return fresh


__all__ = ["ServedAdapters", "resolve", "unresolved_reason"]
