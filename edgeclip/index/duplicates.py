"""Near-duplicate groups without chaining (pure numpy).

"Connected components of cosine >= t" chains: A~B and B~C put A and C together even when A and C
are different photos, so a burst of shots of one football game, or nine different motorbikes,
become one group. Here a group is a *complete-linkage* cluster: EVERY pair inside a group has
cosine >= ``threshold``.

1. Candidate pairs (cosine >= threshold) are found block by block (memory ~ block x N) and split
   the rows into connected components; rows in different components can never share a group.
2. Each component is clustered by complete-linkage agglomeration (the nearest-neighbour-chain
   algorithm, O(m^2) time and memory for a component of m rows, Lance-Williams update
   ``sim(a+b, k) = min(sim(a, k), sim(b, k))``), keeping the merges at similarity >= threshold.

:data:`DEFAULT_THRESHOLD` was chosen on Flickr8k dev images (positives: byte copies, JPEG
re-encodes at quality 60, 50% resizes, 10% crops, 3-5 degree rotations; negatives: different
photos of the same scene type) with the built-in model; ``benchmarks/duplicates.py`` measures it
and records precision/recall on the test split (``benchmarks/results/duplicates.json``).
"""

from __future__ import annotations

import numpy as np

from .search import duplicate_groups as connected_groups

#: the threshold for a model whose manifest records none (chosen on Flickr8k dev by
#: benchmarks/duplicates.py for the round-1 default model); a bundle measured by that benchmark
#: carries its own in ``extra.duplicate_threshold``
DEFAULT_THRESHOLD = 0.86
#: the manifest key (under ``extra``, outside the model's identity)
MANIFEST_KEY = "duplicate_threshold"


def check_threshold(value, where: str) -> float:
    """``value`` as a cosine in (0, 1], or an InputError naming ``where``."""
    from ..errors import InputError
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if isinstance(value, bool) or not 0.0 < t <= 1.0:
        raise InputError(f"{where}: duplicate threshold {value!r} is not a cosine similarity; "
                         "pass a cosine similarity in (0, 1], e.g. 0.86.")
    return t


def manifest_threshold(manifest) -> float | None:
    """The duplicate threshold measured for this model (``extra.duplicate_threshold``), or None."""
    from ..errors import BundleError, InputError
    extra = getattr(manifest, "extra", None) or {}
    if MANIFEST_KEY not in extra:
        return None
    try:
        return check_threshold(extra[MANIFEST_KEY], f"manifest extra.{MANIFEST_KEY}")
    except InputError as e:  # the bundle is at fault, not the caller
        raise BundleError(f"{e} Fix or remove the key (`python benchmarks/duplicates.py "
                          "--bundle B --write-manifest` measures it).") from None


def record_threshold(bundle_dir, threshold: float, source: str = "") -> None:
    """Record ``threshold`` in the bundle's manifest (``extra``: the model's identity, and so
    every index built with it, stays valid)."""
    from ..manifest import load_bundle, write_manifest
    t = check_threshold(threshold, "threshold")
    manifest, bundle_dir = load_bundle(bundle_dir)  # files checked before the manifest is rewritten
    manifest.extra[MANIFEST_KEY] = t
    if source:
        manifest.extra[MANIFEST_KEY + "_source"] = source
    write_manifest(manifest, bundle_dir)


def _components(matrix: np.ndarray, threshold: float, block: int) -> list[np.ndarray]:
    """Connected components of "cosine >= threshold" (they may chain; each is then split by
    complete linkage)."""
    return [np.asarray(g) for g in connected_groups(matrix, threshold, block)]


def complete_linkage(sims: np.ndarray, threshold: float) -> list[list[int]]:
    """Complete-linkage clusters of a (m, m) similarity matrix cut at ``threshold``: lists of
    row indices (singletons included), each cluster's pairs all >= threshold."""
    m = sims.shape[0]
    if m == 1:
        return [[0]]
    s = np.array(sims, dtype=np.float64, copy=True)
    np.fill_diagonal(s, -np.inf)
    active = np.ones(m, dtype=bool)
    members: dict[int, list[int]] = {i: [i] for i in range(m)}
    merges: list[tuple[int, int, float]] = []
    chain: list[int] = []
    remaining = m
    while remaining > 1:
        if not chain:
            chain.append(int(np.flatnonzero(active)[0]))
        a = chain[-1]
        row = np.where(active, s[a], -np.inf)
        row[a] = -np.inf
        b = int(np.argmax(row))
        # prefer the previous chain element on ties (guarantees termination)
        if len(chain) > 1 and row[chain[-2]] >= row[b]:
            b = chain[-2]
        if len(chain) > 1 and b == chain[-2]:
            chain.pop()
            chain.pop()
            merges.append((a, b, float(s[a, b])))
            # merge b into a (complete linkage: the smaller similarity)
            new = np.minimum(s[a], s[b])
            s[a], s[:, a] = new, new
            s[a, a] = -np.inf
            active[b] = False
            s[b, :], s[:, b] = -np.inf, -np.inf
            members[a].extend(members.pop(b))
            remaining -= 1
        else:
            chain.append(b)
    # the cut: clusters of the merges at similarity >= threshold (complete linkage is
    # monotone, so this equals cutting the dendrogram)
    parent = list(range(m))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, sim in merges:
        if sim >= threshold:
            parent[find(b)] = find(a)
    out: dict[int, list[int]] = {}
    for i in range(m):
        out.setdefault(find(i), []).append(i)
    return list(out.values())


def duplicate_groups(matrix: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                     block: int = 2048) -> list[list[int]]:
    """Groups (2+ rows) of ``matrix`` (unit rows) in which every pair has cosine >=
    ``threshold``; largest first, rows sorted in each."""
    matrix = np.asarray(matrix, dtype=np.float32)
    groups: list[list[int]] = []
    for comp in _components(matrix, threshold, block):
        sims = matrix[comp] @ matrix[comp].T
        for cluster in complete_linkage(sims, threshold):
            if len(cluster) > 1:
                groups.append(sorted(int(comp[i]) for i in cluster))
    groups.sort(key=lambda g: (-len(g), g[0]))
    return groups
