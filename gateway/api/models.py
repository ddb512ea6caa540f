"""``GET /v1/models``: every name a client may put in ``model``, and what serves it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import READ, ComponentsDep, IdentityDep
from gateway.components import Components
from gateway.errors import ModelNotFound
from routing import Policy, TargetKind

router = APIRouter()


def model_cards(parts: Components) -> list[dict[str, Any]]:
    config = parts.config
    cards: list[dict[str, Any]] = []
    for name, entry in parts.table.models.items():
        info: dict[str, Any]
        if isinstance(entry, Policy):
            info = {
                "kind": "policy",
                "description": entry.description,
                "rules": [rule.name for rule in entry.rules],
                "default": entry.default.label,
            }
        else:
            info = {"kind": entry.kind.value, "upstream": entry.name}
            if entry.kind is TargetKind.ADAPTER:
                info["base"] = config.base_model_name
                resident_on = parts.fleet.resident_on(name)
                info["resident"] = bool(resident_on)
                info["replicas"] = resident_on
                info["description"] = config.adapters[name].description
                served = parts.served.current.get(name)
                if served is not None and served.store is not None:
                    info["version"] = served.version  # the store version requests go to now (None: nothing active)
        cards.append(
            {"id": name, "object": "model", "created": parts.started_at, "owned_by": "turnout", "turnout": info}
        )
    embedding = parts.embeddings.describe()  # None unless POST /v1/embeddings is served
    if embedding is not None:
        name = parts.embeddings.name
        cards.append(
            {"id": name, "object": "model", "created": parts.started_at, "owned_by": "turnout", "turnout": embedding}
        )
    return cards


@router.api_route("/v1/models", methods=READ)
async def list_models(parts: ComponentsDep, _: IdentityDep) -> dict[str, Any]:
    return {"object": "list", "data": model_cards(parts)}


@router.api_route("/v1/models/{model:path}", methods=READ)
async def retrieve_model(model: str, parts: ComponentsDep, _: IdentityDep) -> dict[str, Any]:
    for card in model_cards(parts):
        if card["id"] == model:
            return card
    raise ModelNotFound(f"The model {model!r} does not exist here", param="model")
