"""``turnout rag``: ingest, list and delete documents of a collection.

While the gateway runs it owns the embedded store (one process may open it), so these commands go
through its HTTP API; when it does not run they open the store themselves. Offline, the store is opened
first, so a store held by a gateway the command cannot reach is reported before any slow work; listing
and deleting never load the embedding model (the vector size matters only to create a partition).
Ingestion shows a progress bar, can be interrupted and run again (unchanged documents are skipped,
half-written ones redone), and ends with what was added, replaced, skipped and failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.cli.common import USAGE, ConfigOption, HttpError, JsonClient, Unreachable, fail, group, load_or_exit
from gateway.config import TurnoutConfig

if TYPE_CHECKING:  # the vector store client is imported by the commands that use it
    from gateway.rag.documents import Document
    from gateway.rag.store import VectorStore

app = group("Retrieval collections: ingest, list and delete documents.")

GatewayOption = Annotated[
    str | None,
    typer.Option(
        metavar="URL",
        help="Go through the gateway at URL, with the API key in TURNOUT_API_KEY. Without it, the gateway at "
        "server.host:server.port is used when it answers, else the command opens the store itself.",
    ),
]
CollectionArg = Annotated[
    str, typer.Argument(metavar="COLLECTION", help="A collection declared under rag.collections.")
]
TenantOption = Annotated[
    str | None,
    typer.Option(
        metavar="TENANT",
        help="The tenant whose partition to use. Through a gateway, a tenant's API key always uses its own tenant "
        "(naming another is refused), while an admin key, or a gateway without keys, uses the one named. "
        "Omitted: the API key's tenant, else the shared documents.",
    ),
]
_BATCH_BYTES = 1024 * 1024


def _settings_for(config: Path, collection: str) -> TurnoutConfig:
    """The configuration, once it is known to declare ``collection``."""
    settings = load_or_exit(config)
    if collection not in settings.rag.collections:
        declared = ", ".join(settings.rag.collections) or "none"
        raise fail(f"collection {collection!r} is not declared under rag.collections (declared: {declared})", USAGE)
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


def _gateway_url(settings: TurnoutConfig, gateway: str | None) -> str:
    return gateway or f"http://{settings.server.host}:{settings.server.port}"


def _api_for(settings: TurnoutConfig, gateway: str | None) -> _Api | None:
    client = JsonClient(_gateway_url(settings, gateway), os.environ.get("TURNOUT_API_KEY"))
    if client.alive():
        return _Api(client)
    if gateway is not None:
        raise fail(f"no gateway answers at {gateway}")
    return None


@contextlib.asynccontextmanager
async def _offline_store(settings: TurnoutConfig) -> AsyncIterator[VectorStore]:
    """The store, opened without the embedding model (fast), closed after; a clear message when a gateway
    holds it, and one line instead of a traceback when it fails."""
    from gateway.rag.store import StoreError, StoreLocked, VectorStore

    config = settings.rag.store
    where = config.url or config.path
    try:
        store = VectorStore.open(config)
    except StoreLocked:
        raise fail(
            f"the vector store at {where} is open in another process (a gateway?), and no gateway answers at "
            f"{_gateway_url(settings, None)}: pass --gateway URL to go through the gateway that holds it "
            "(with TURNOUT_API_KEY), or stop it"
        ) from None
    except StoreError as exc:
        raise fail(str(exc)) from None
    try:
        yield store
    except (typer.Exit, typer.Abort):
        raise
    except StoreError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # the client's many kinds (connection, response): one line for the operator
        raise fail(f"the vector store at {where} failed: {exc.__class__.__name__}: {exc}") from None
    finally:
        await store.close()


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
    paths: Annotated[
        list[Path], typer.Argument(metavar="PATH", help="Files or directories of .md .txt .html .pdf .jsonl files.")
    ],
    config: ConfigOption,
    tenant: TenantOption = None,
    gateway: GatewayOption = None,
) -> None:
    """Chunk, embed and store documents; unchanged ones are skipped, changed ones replaced.

    Goes through the running gateway when one answers (see --gateway), else opens the store and loads the
    embedding model itself. A document's id is its path as given (or the id of its JSON Lines record), so
    running the same command again is safe and cheap.

    Exit status: 0 when every document was stored or skipped; 1 when one failed (each is listed), or the
    store or the gateway did; 2 when the configuration cannot be used or does not declare the collection;
    130 when interrupted (run the command again to finish).
    """
    settings = _settings_for(config, collection)
    report: dict[str, Any] = {"added": [], "replaced": [], "skipped": [], "failed": [], "chunks": 0}
    started = time.monotonic()
    api = _api_for(settings, gateway)
    try:
        if api is not None:
            documents = _read(paths, report)
            with _progress(collection, len(documents), started) as advance:
                for batch in _batches([_as_payload(d) for d in documents]):
                    answer = api.call(
                        "POST",
                        f"/v1/rag/collections/{_quote(collection)}/documents",
                        {"documents": batch, "tenant": tenant},
                    )
                    _merge(report, answer)
                    advance(len(batch))
        else:
            asyncio.run(_ingest_offline(settings, collection, tenant or "", paths, report, started))
    except KeyboardInterrupt:
        _print_report(report, time.monotonic() - started)
        raise fail("interrupted: run the same command again to finish (unchanged documents are skipped)", 130) from None
    _print_report(report, time.monotonic() - started)
    if report["failed"]:
        raise typer.Exit(1)


def _read(paths: list[Path], report: dict[str, Any]) -> list[Document]:
    """The documents under ``paths``; what cannot be read goes to the report's failures."""
    from gateway.rag.documents import LoadFailure, load_path

    documents = []
    for path in paths:
        if not path.exists():
            report["failed"].append({"id": str(path), "reason": "no such file or directory"})
            continue
        for item in load_path(path):
            if isinstance(item, LoadFailure):
                report["failed"].append({"id": item.source, "reason": item.reason})
            else:
                documents.append(item)
    return documents


@contextlib.contextmanager
def _progress(collection: str, total: int, started: float) -> Iterator[Callable[[int], None]]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(f"ingesting into {collection}", total=total, rate="")

        def advance(count: int) -> None:
            done = progress.tasks[0].completed + count
            rate = done / max(time.monotonic() - started, 1e-6)
            progress.update(task, advance=count, rate=f"{rate:.1f} docs/s")

        yield advance


def _as_payload(document: Document) -> dict[str, Any]:
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


async def _ingest_offline(
    settings: TurnoutConfig, collection: str, tenant: str, paths: list[Path], report: dict[str, Any], started: float
) -> None:
    from gateway.embeddings import Embedder, EmbedderError
    from gateway.rag.ingest import Ingestor

    # The store first: one held elsewhere is reported before anything is read or loaded.
    async with _offline_store(settings) as store:
        documents = _read(paths, report)
        embedder = Embedder(settings.embeddings)
        try:
            await embedder.start()
            ingestor = Ingestor(store.sized(embedder.dimension), embedder, settings.rag.chunking)
            with _progress(collection, len(documents), started) as advance:
                _merge(report, (await ingestor.ingest(collection, tenant, documents, advance)).as_dict())
        except EmbedderError as exc:
            raise fail(str(exc)) from None
        finally:
            embedder.close()


@app.command("list")
def list_documents(
    collection: CollectionArg,
    config: ConfigOption,
    tenant: TenantOption = None,
    gateway: GatewayOption = None,
) -> None:
    """The documents of a collection's partition, one JSON object a line.

    Offline, the store is opened without loading the embedding model.

    Exit status: 0 when listed (an empty partition lists nothing); 1 when the store or the gateway failed;
    2 when the configuration cannot be used or does not declare the collection.
    """
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
    async with _offline_store(settings) as store:
        return [{"id": m.doc_id, **m.payload} for m in await store.manifests(collection, tenant)]


@app.command("delete")
def delete(
    collection: CollectionArg,
    config: ConfigOption,
    document: Annotated[
        str | None, typer.Argument(metavar="ID", help="A document id; without it, the whole partition.")
    ] = None,
    tenant: TenantOption = None,
    gateway: GatewayOption = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete a whole partition without asking for confirmation.")
    ] = False,
) -> None:
    """Delete one document (all its chunks), or a collection's whole partition.

    Before a whole partition goes, the command says how many documents it holds and asks; --yes skips the
    question, and is required when stdin is not a terminal to ask on. One document goes without asking.
    Offline, the store is opened without loading the embedding model. The collection stays declared.

    Exit status: 0 when deleted; 1 when there was nothing to delete, the answer was no, or the store or the
    gateway failed; 2 when the configuration cannot be used or does not declare the collection, or when a
    whole partition would need a confirmation nobody can give (no terminal, no --yes).
    """
    ask = document is None and not yes
    if ask and not sys.stdin.isatty():
        raise fail(
            f"deleting the whole partition of {collection!r} needs confirmation, and stdin is not a terminal to "
            "ask on: pass --yes to delete it without asking",
            USAGE,
        )
    settings = _settings_for(config, collection)
    api = _api_for(settings, gateway)
    if api is None:
        asyncio.run(_delete_offline(settings, collection, tenant or "", document, ask))
        return
    query = f"?tenant={_quote(tenant)}" if tenant else ""
    path = f"/v1/rag/collections/{_quote(collection)}"
    if ask:
        listed = api.call("GET", f"{path}/documents{query}")
        _confirm(collection, listed.get("tenant") or "", len(listed.get("data", [])))
    answer = api.call("DELETE", path + (f"/documents/{_quote(document)}" if document else "") + query)
    typer.echo(json.dumps(answer))
    if not answer.get("deleted"):
        raise fail(f"nothing to delete: collection {collection!r} has no partition for {_whose(answer.get('tenant'))}")


def _whose(tenant: str | None) -> str:
    return f"tenant {tenant!r}" if tenant else "the shared documents"


def _confirm(collection: str, tenant: str, documents: int) -> None:
    """Ask before a whole partition goes (not when it holds nothing); a no exits 1."""
    if documents == 0:
        return
    question = (
        f"Delete the partition of {_whose(tenant)} in collection {collection!r}: "
        f"{documents} document(s) and all their chunks?"
    )
    if not typer.confirm(question, default=False):
        raise fail("nothing deleted")


async def _delete_offline(
    settings: TurnoutConfig, collection: str, tenant: str, document: str | None, ask: bool
) -> None:
    async with _offline_store(settings) as store:
        if document is not None:
            deleted = await store.delete_document(collection, tenant, document)
        else:
            if ask:
                _confirm(collection, tenant, len(await store.manifests(collection, tenant)))
            deleted = await store.drop_partition(collection, tenant)
    if not deleted:
        what = f"no document {document!r} in" if document is not None else "no partition for"
        raise fail(f"nothing to delete: collection {collection!r} has {what} {_whose(tenant)}")
    typer.echo(json.dumps({"collection": collection, "document": document, "deleted": True}))
