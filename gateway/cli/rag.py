"""``turnout rag``: ingest, list and delete documents of a collection.

While the gateway runs it owns the embedded store (one process may open it), so these commands go
through its HTTP API; when it does not run they open the store themselves. Ingestion shows a progress
bar, can be interrupted and run again (unchanged documents are skipped, half-written ones redone), and
ends with what was added, replaced, skipped and failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.cli.common import ConfigOption, HttpError, JsonClient, Unreachable, fail, load_or_exit
from gateway.config import TurnoutConfig

app = typer.Typer(no_args_is_help=True, help="Retrieval collections: ingest, list and delete documents.")

GatewayOption = Annotated[
    str | None, typer.Option(help="The running gateway's URL (default: server.host and server.port).")
]
CollectionArg = Annotated[str, typer.Argument(help="A collection declared under rag.collections.")]
TenantOption = Annotated[str | None, typer.Option(help="The tenant's partition (default: shared documents).")]
_BATCH_BYTES = 1024 * 1024


def _settings_for(config: Path, collection: str) -> TurnoutConfig:
    """The configuration, once it is known to declare ``collection``."""
    settings = load_or_exit(config)
    if collection not in settings.rag.collections:
        declared = ", ".join(settings.rag.collections) or "none"
        raise fail(f"collection {collection!r} is not declared under rag.collections (declared: {declared})")
    return settings


class _Api:
    """The running gateway's RAG API (its key from ``TURNOUT_API_KEY``)."""

    def __init__(self, client: JsonClient) -> None:
        self.client = client

    def call(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        try:
            return dict(self.client.call(method, path, payload))
        except HttpError as exc:
            raise fail(f"the gateway answered {exc.status}: {exc.message}") from None
        except Unreachable as exc:
            raise fail(f"cannot reach the gateway at {exc}") from None


def _api_for(settings: TurnoutConfig, gateway: str | None) -> _Api | None:
    client = JsonClient(
        gateway or f"http://{settings.server.host}:{settings.server.port}", os.environ.get("TURNOUT_API_KEY")
    )
    if client.alive():
        return _Api(client)
    if gateway is not None:
        raise fail(f"no gateway answers at {gateway}")
    return None


def _batches(documents: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for document in documents:
        length = len(json.dumps(document))
        if batch and size + length > _BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(document)
        size += length
    if batch:
        yield batch


@app.command("ingest")
def ingest(
    collection: CollectionArg,
    paths: Annotated[list[Path], typer.Argument(help="Files or directories: .md .txt .html .pdf .jsonl")],
    config: ConfigOption,
    tenant: TenantOption = None,
    gateway: GatewayOption = None,
) -> None:
    """Chunk, embed and store documents; unchanged ones are skipped, changed ones replaced."""
    from gateway.rag.documents import Document, LoadFailure, load_path

    settings = _settings_for(config, collection)
    documents: list[Document] = []
    failed: list[dict[str, str]] = []
    for path in paths:
        if not path.exists():
            failed.append({"id": str(path), "reason": "no such file or directory"})
            continue
        for item in load_path(path):
            if isinstance(item, LoadFailure):
                failed.append({"id": item.source, "reason": item.reason})
            else:
                documents.append(item)
    report: dict[str, Any] = {"added": [], "replaced": [], "skipped": [], "failed": failed, "chunks": 0}
    started = time.monotonic()
    api = _api_for(settings, gateway)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(f"ingesting into {collection}", total=len(documents), rate="")

            def advance(count: int) -> None:
                done = progress.tasks[0].completed + count
                rate = done / max(time.monotonic() - started, 1e-6)
                progress.update(task, advance=count, rate=f"{rate:.1f} docs/s")

            if api is not None:
                payload = [_as_payload(d) for d in documents]
                for batch in _batches(payload):
                    answer = api.call(
                        "POST",
                        f"/v1/rag/collections/{_quote(collection)}/documents",
                        {"documents": batch, "tenant": tenant},
                    )
                    _merge(report, answer)
                    advance(len(batch))
            else:
                asyncio.run(_ingest_offline(settings, collection, tenant or "", documents, report, advance))
    except KeyboardInterrupt:
        _print_report(report, time.monotonic() - started)
        raise fail("interrupted: run the same command again to finish (unchanged documents are skipped)", 130) from None
    _print_report(report, time.monotonic() - started)
    if report["failed"]:
        raise typer.Exit(1)


def _as_payload(document: Any) -> dict[str, Any]:
    return {
        "id": document.id,
        "text": document.text,
        "title": document.title,
        "source": document.source,
        "url": document.url,
        "updated_at": document.updated_at,
        "content_hash": document.content_hash,  # its own notion of changed: file mtimes left out
    }


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _merge(report: dict[str, Any], answer: dict[str, Any]) -> None:
    for key in ("added", "replaced", "skipped", "failed"):
        report[key] += answer.get(key, [])
    report["chunks"] += int(answer.get("chunks", 0))


def _print_report(report: dict[str, Any], seconds: float) -> None:
    typer.echo(
        f"added {len(report['added'])}, replaced {len(report['replaced'])}, skipped {len(report['skipped'])}, "
        f"failed {len(report['failed'])} ({report['chunks']} chunks written in {seconds:.1f} s)"
    )
    for failure in report["failed"]:
        typer.echo(f"  failed: {failure['id']}: {failure['reason']}", err=True)


async def _open_offline(settings: TurnoutConfig) -> Any:
    from gateway.embeddings import Embedder, EmbedderError
    from gateway.rag.ingest import Ingestor
    from gateway.rag.store import StoreError, VectorStore

    embedder = Embedder(settings.embeddings)
    try:
        await embedder.start()
        store = VectorStore.open(settings.rag.store, embedder.dimension)
    except (StoreError, EmbedderError) as exc:
        embedder.close()
        raise fail(str(exc)) from None
    return embedder, store, Ingestor(store, embedder, settings.rag.chunking)


async def _ingest_offline(
    settings: TurnoutConfig,
    collection: str,
    tenant: str,
    documents: list[Any],
    report: dict[str, Any],
    advance: Callable[[int], None],
) -> None:
    embedder, store, ingestor = await _open_offline(settings)
    try:
        _merge(report, (await ingestor.ingest(collection, tenant, documents, advance)).as_dict())
    finally:
        await store.close()
        embedder.close()


@app.command("list")
def list_documents(
    collection: CollectionArg,
    config: ConfigOption,
    tenant: TenantOption = None,
    gateway: GatewayOption = None,
) -> None:
    """The documents of a collection's partition, as JSON lines."""
    settings = _settings_for(config, collection)
    api = _api_for(settings, gateway)
    if api is not None:
        query = f"?tenant={_quote(tenant)}" if tenant else ""
        rows = api.call("GET", f"/v1/rag/collections/{_quote(collection)}/documents{query}")["data"]
    else:
        rows = asyncio.run(_list_offline(settings, collection, tenant or ""))
    for row in rows:
        typer.echo(json.dumps(row))


async def _list_offline(settings: TurnoutConfig, collection: str, tenant: str) -> list[dict[str, Any]]:
    embedder, store, _ = await _open_offline(settings)
    try:
        return [{"id": m.doc_id, **m.payload} for m in await store.manifests(collection, tenant)]
    finally:
        await store.close()
        embedder.close()


@app.command("delete")
def delete(
    collection: CollectionArg,
    config: ConfigOption,
    document: Annotated[str | None, typer.Argument(help="A document id; without it, the whole partition.")] = None,
    tenant: TenantOption = None,
    gateway: GatewayOption = None,
) -> None:
    """Delete one document (all its chunks) or a collection's whole partition."""
    settings = _settings_for(config, collection)
    api = _api_for(settings, gateway)
    query = f"?tenant={_quote(tenant)}" if tenant else ""
    if api is not None:
        path = f"/v1/rag/collections/{_quote(collection)}"
        path += f"/documents/{_quote(document)}" if document else ""
        typer.echo(json.dumps(api.call("DELETE", path + query)))
        return
    deleted = asyncio.run(_delete_offline(settings, collection, tenant or "", document))
    if not deleted:
        raise fail(f"nothing to delete: {document or 'the partition'} does not exist")
    typer.echo(json.dumps({"collection": collection, "document": document, "deleted": True}))


async def _delete_offline(settings: TurnoutConfig, collection: str, tenant: str, document: str | None) -> bool:
    embedder, store, _ = await _open_offline(settings)
    try:
        if document is None:
            return bool(await store.drop_partition(collection, tenant))
        return bool(await store.delete_document(collection, tenant, document))
    finally:
        await store.close()
        embedder.close()
