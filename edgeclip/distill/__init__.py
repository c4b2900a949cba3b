"""Torch-side training: teachers, registry students, the Cona knowledge-interaction graph, the
trainer and retrieval evaluation. Needs ``pip install 'edgeclip[train]'``; the runtime never
imports this package."""
