"""``python -m gateway.embeddings``: build the embedding model's ONNX export (see :mod:`.export`)."""

from gateway.embeddings.export import main

main()
