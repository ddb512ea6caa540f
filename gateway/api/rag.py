"""``/v1/rag``: collections and their documents (ingest, list, delete), scoped to the caller's tenant.

A caller's documents go to its own tenant's partition; an admin key (or an open gateway) may name a
``tenant`` explicitly, and without one writes shared documents that every tenant's retrieval sees.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.api.deps import READ, BodyDep, ComponentsDep, IdentityDep
from gateway.auth import Identity
from gateway.components import Components
from gateway.errors import CollectionNotFound, InvalidRequest, PermissionDenied, TurnoutError
from gateway.failures import Boundary, translate
from gateway.protocol.bodies import invalid, json_object
from gateway.rag import SHARED
from gateway.rag.documents import Document, document_from_mapping
from routing.spec import NAME_PATTERN

if TYPE_CHECKING:  # the vector store client loads only in a gateway that has collections
    from gateway.rag.ingest import Ingestor
    from gateway.rag.store import VectorStore

router = APIRouter(prefix="/v1/rag")
TENANT_NAME = re.compile(NAME_PATTERN)  # tenants are named like models, policies and adapters
TenantQuery = Annotated[str | None, Query(description="Admin only: the tenant whose partition to use.")]


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=10_000)]
    tenant: str | None = None


def _rag(parts: Components, collection: str) -> tuple[VectorStore, Ingestor]:
    if parts.store is None or parts.ingestor is None:
        raise CollectionNotFound("retrieval is not configured on this gateway (no rag.collections)")
    if collection not in parts.config.rag.collections:
        raise CollectionNotFound(f"collection {collection!r} is not declared under rag.collections", param="collection")
    return parts.store, parts.ingestor


def _scope(who: Identity, requested: str | None, *, write: bool = False) -> str:
    """The partition a caller acts on: its own tenant, or (admins) the one it names, else shared.

    Shared documents reach every tenant's prompts, so only an admin key (or an open gateway) may
    change them; a key without a tenant may read them."""
    if requested is not None and not who.admin and requested != who.tenant:
        raise PermissionDenied("only an admin key may act on another tenant's documents")
    if requested is not None:
        if not TENANT_NAME.fullmatch(requested):
            raise InvalidRequest(f"{requested!r} is not a tenant name (1-128 of A-Z a-z 0-9 . _ : / -)", param="tenant")
        return requested
    if who.tenant is not None:
        return who.tenant
    if write and not who.admin:
        raise PermissionDenied("only an admin key may change the shared documents every tenant retrieves")
    return SHARED


async def _guard(call: Any) -> Any:
    try:
        return await call
    except TurnoutError:
        raise
    except Exception as exc:  # the store's many failure kinds: see gateway.failures
        raise translate(exc, Boundary.RETRIEVAL, "the vector store") from exc


@router.api_route("/collections", methods=READ)
async def list_collections(parts: ComponentsDep, who: IdentityDep) -> dict[str, Any]:
    data = []
    for name, spec in parts.config.rag.collections.items():
        partitions = []
        if parts.store is not None:
            for _, tenant in await _guard(parts.store.partitions(name)):
                if who.admin or tenant in (who.tenant, SHARED):
                    chunks = await _guard(parts.store.count(name, tenant))
                    documents = len(await _guard(parts.store.manifests(name, tenant)))
                    partitions.append({"tenant": tenant or None, "documents": documents, "chunks": chunks})
        data.append({"name": name, "description": spec.description, "partitions": partitions})
    return {"object": "list", "data": data}


@router.post("/collections/{collection}/documents")
async def ingest(collection: str, body: BodyDep, parts: ComponentsDep, who: IdentityDep) -> dict[str, Any]:
    _, ingestor = _rag(parts, collection)
    try:
        request = IngestRequest.model_validate(json_object(body))
    except ValidationError as exc:
        raise invalid(exc) from None
    tenant = _scope(who, request.tenant, write=True)
    documents: list[Document] = []
    for index, item in enumerate(request.documents):
        # Without an id, a document is known by its text: the same text is the same document.
        text = item.get("text")
        default_id = (
            "sha256:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:24]
            if isinstance(text, str)
            else f"api#{index}"
        )
        given = item.get("id")
        source = str(given) if isinstance(given, str | int) and not isinstance(given, bool) else default_id
        try:
            document = document_from_mapping(item, default_source=source, default_id=default_id)
        except ValueError as exc:
            raise InvalidRequest(f"documents.{index}: {exc}", param=f"documents.{index}") from None
        given_hash = item.get("content_hash")
        if isinstance(given_hash, str) and re.fullmatch(r"[0-9a-f]{64}", given_hash):
            # The sender's own notion of "changed" (the CLI leaves file modification times out of it).
            document = replace(document, content_hash=given_hash)
        documents.append(document)
    ids = [d.id for d in documents]
    if len(set(ids)) != len(ids):
        raise InvalidRequest("two documents in one request have the same id", param="documents")
    report = await _guard(ingestor.ingest(collection, tenant, documents))
    return {"collection": collection, "tenant": tenant or None, **report.as_dict()}


@router.api_route("/collections/{collection}/documents", methods=READ)
async def list_documents(
    collection: str, parts: ComponentsDep, who: IdentityDep, tenant: TenantQuery = None
) -> dict[str, Any]:
    store, _ = _rag(parts, collection)
    scope = _scope(who, tenant)
    manifests = await _guard(store.manifests(collection, scope))
    keep = ("source", "title", "url", "updated_at", "content_hash", "chunks", "ingested_at")
    return {
        "object": "list",
        "collection": collection,
        "tenant": scope or None,
        "data": [{"id": m.doc_id, **{k: m.payload.get(k) for k in keep}} for m in manifests],
    }


@router.delete("/collections/{collection}/documents/{doc_id:path}")
async def delete_document(
    collection: str, doc_id: str, parts: ComponentsDep, who: IdentityDep, tenant: TenantQuery = None
) -> dict[str, Any]:
    store, _ = _rag(parts, collection)
    scope = _scope(who, tenant, write=True)
    if not await _guard(store.delete_document(collection, scope, doc_id)):
        raise CollectionNotFound(f"no document {doc_id!r} in collection {collection!r}", param="doc_id")
    return {"id": doc_id, "deleted": True}


@router.delete("/collections/{collection}")
async def delete_collection(
    collection: str, parts: ComponentsDep, who: IdentityDep, tenant: TenantQuery = None
) -> dict[str, Any]:
    """Drop the caller's partition of a collection (the collection stays declared)."""
    store, _ = _rag(parts, collection)
    scope = _scope(who, tenant, write=True)
    existed = await _guard(store.drop_partition(collection, scope))
    return {"collection": collection, "tenant": scope or None, "deleted": existed}
