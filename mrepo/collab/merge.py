"""Three-way merge of populations.

Keys are grouped into population **objects**: ``species NAME`` (everything
under ``species/NAME/``), ``item SRC/ITEM`` (an item's document and arrays),
and, outside the population layout, ``array NAME`` / ``document NAME``.
An object changed on one side only takes that side's state; an object
changed on both sides to different states is a **conflict**. Derived
documents are never conflicts: each source's item list is rebuilt from the
merged items, and ``population.json`` (its species digest table included)
is recomputed from the merged species: the provenance digest of every
species the merge brings or changes is recomputed and must match its
document, and its particles must name items of the merged population,
before the merge commit is written with both parents.

On conflicts nothing changes in the repository: the merge is recorded as
pending in ``.git/mrepo/MERGE_STATE.json`` until the user resolves each
conflicting object (``ours``/``theirs``, per object or for all) or aborts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConflictError, CorruptObject, InvalidInput, NotFound
from ..store.atomic import atomic_write
from ..store.diff import changed_keys
from ..store.layout import DATA, DOCS, METADATA_NAMES
from ..store.snapshot import Entry, Snapshot
from .transfer import ancestors, is_ancestor

__all__ = ["MergeConflict", "MergeResult", "merge", "merge_base", "object_of", "merge_state", "abort_merge", "parse_object"]

STATE_FILE = "MERGE_STATE.json"
DERIVED = "derived"


class MergeConflict(ConflictError):
    """The same objects changed on both sides; ``conflicts`` lists them."""

    kind = "merge-conflict"

    def __init__(self, message: str, obj: str | None, conflicts: list[str]) -> None:
        super().__init__(message, obj)
        self.conflicts = conflicts


@dataclass
class MergeResult:
    commit: str | None
    base: str | None
    theirs: str
    fast_forward: bool = False
    up_to_date: bool = False
    taken: list[str] = field(default_factory=list)  # objects taken from theirs
    resolved: dict[str, str] = field(default_factory=dict)  # conflicting object -> side


def merge_base(repo, a: str, b: str) -> str | None:
    """A best common ancestor of commits ``a`` and ``b`` (None if unrelated)."""
    anc_a = ancestors(repo, [a])
    cands: set[str] = set()
    seen: set[str] = set()
    stack = [b]
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        if c in anc_a:
            cands.add(c)
            continue
        stack.extend(p.decode("ascii") for p in repo.objects.commit(c).parents)
    best = [c for c in cands if not any(o != c and c in ancestors(repo, [o]) for o in cands)]
    if not best:
        return None
    return max(best, key=lambda c: (repo.objects.commit(c).commit_time, c))


def object_of(key: str, snap: Snapshot | None = None) -> str:
    """The population object a tree key belongs to."""
    parts = key.split("/")
    if parts[0] == DOCS:
        if len(parts) >= 3 and parts[1] == "species":
            return f"species {parts[2]}"
        if len(parts) >= 5 and parts[1] == "sources" and parts[3] == "items":
            return f"item {parts[2]}/{parts[4][:-5] if parts[4].endswith('.json') else parts[4]}"
        if key == f"{DOCS}/population.json" or (len(parts) == 4 and parts[1] == "sources" and parts[3] == "source.json"):
            return DERIVED
        return "document " + "/".join(parts[1:])
    if parts[0] == DATA:
        if len(parts) >= 4 and parts[1] == "species":
            return f"species {parts[2]}"
        if len(parts) >= 6 and parts[1] == "sources" and parts[3] == "items":
            return f"item {parts[2]}/{parts[4]}"
        if parts[-1] in METADATA_NAMES and (len(parts) == 2 or parts[1] in ("species", "sources")):
            return DERIVED  # group metadata of the layout's own folders
        if parts[-1] in METADATA_NAMES:
            return "array " + "/".join(parts[1:-1])
        owner = snap.owner(key) if snap is not None else "/".join(parts[:-1])
        return "array " + owner[len(DATA) + 1 :]
    return DERIVED


def parse_object(text: str) -> str:
    """Accept ``species/NAME``, ``species:NAME``, ``species NAME``, ``item/SRC/ITEM`` ... or ``all``."""
    t = text.strip()
    if t == "all":
        return t
    for kind in ("species", "item", "array", "document"):
        for sep in (" ", "/", ":"):
            if t.startswith(kind + sep) and len(t) > len(kind) + 1:
                return f"{kind} {t[len(kind) + 1:]}"
    raise InvalidInput("name objects as species/NAME, item/SRC/ITEM, array/NAME, document/NAME or 'all'", text)


# ---------------------------------------------------------------------------
# pending merge state
# ---------------------------------------------------------------------------
def _state_path(repo):
    return repo.mrepo_dir / STATE_FILE


def merge_state(repo) -> dict[str, Any] | None:
    p = _state_path(repo)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        raise CorruptObject("unreadable pending-merge state", str(p)) from None


def abort_merge(repo) -> bool:
    p = _state_path(repo)
    if p.exists():
        p.unlink()
        return True
    return False


# ---------------------------------------------------------------------------
# derived documents
# ---------------------------------------------------------------------------
def _rebuild_derived(txn, ours: Snapshot, theirs: Snapshot, base: Snapshot) -> None:
    """Rewrite sources' item lists and population.json from the merged objects."""
    from ..model.population import POPULATION_DOC, _view_array_digest, read_species
    from ..model.provenance import species_digest
    from ..store.arrays import read_document, write_document

    def doc(view, name):
        try:
            return json.loads(read_document(view, name))
        except NotFound:
            return None

    src_names = set()
    for snap in (ours, theirs):
        d = snap.dir(f"{DOCS}/sources") or {}
        src_names.update(d)
    merged_sources: dict[str, str] = {}
    for s in sorted(src_names):
        items_dir = {k[len(f"{DOCS}/sources/{s}/items/") : -5] for k, _ in txn.iter_entries(f"{DOCS}/sources/{s}/items/") if k.endswith(".json")}
        o, t, b = doc(ours, f"sources/{s}/source.json"), doc(theirs, f"sources/{s}/source.json"), doc(base, f"sources/{s}/source.json")
        meta = o if o is not None and (t is None or o != b or t == b) else t
        if meta is None:
            continue
        if not items_dir and o is None and t is None:
            continue
        new = dict(meta)
        new["items"] = sorted(items_dir)
        if new != doc(txn, f"sources/{s}/source.json"):
            write_document(txn, f"sources/{s}/source.json", json.dumps(new, indent=1, sort_keys=True) + "\n")
        merged_sources[s] = new.get("kind", "frames")
    o, t, b = doc(ours, POPULATION_DOC), doc(theirs, POPULATION_DOC), doc(base, POPULATION_DOC)
    if o is None and t is None:
        return
    pop = dict(o if o is not None else t)
    if o is not None and t is not None and b is not None:
        for k in ("name", "extra"):
            if o.get(k) == b.get(k) and t.get(k) != b.get(k):
                pop[k] = t.get(k)
    species_names = sorted({k.split("/")[2] for k, _ in txn.iter_entries(f"{DOCS}/species/") if k.endswith("/species.json")})
    known_items = {
        json.loads(txn.read(k))["data_digest"]
        for k, _ in txn.iter_entries(f"{DOCS}/sources/")
        if "/items/" in k and k.endswith(".json")
    }
    table = {}
    digest_of = _view_array_digest(txn)
    for name in species_names:
        key = f"{DOCS}/species/{name}/species.json"
        sdoc = json.loads(txn.read(key))
        missing = [d for d in sdoc.get("particles", {}).get("items", []) if d not in known_items]
        if missing:
            raise CorruptObject(f"merged species refers to {len(missing)} items the merged population lacks", f"species {name}")
        if txn.get(key) == ours.get(key) and (o or {}).get("species", {}).get(name) == sdoc.get("digest"):
            table[name] = sdoc["digest"]  # our own, unchanged and already verified
            continue
        # a species the merge brings or changes: recompute its provenance digest
        sp = read_species(txn, name)
        digest = species_digest(sp, digest_of)
        if digest != sdoc.get("digest"):
            raise CorruptObject("merged species does not match its recorded digest", f"species {name}")
        table[name] = digest
    pop["species"] = table
    pop["sources"] = merged_sources or pop.get("sources", {})
    if pop != doc(txn, POPULATION_DOC):
        write_document(txn, POPULATION_DOC, json.dumps(pop, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------
def _group(changes: Mapping[str, tuple[Entry | None, Entry | None]], snaps: tuple[Snapshot, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, (a, b) in changes.items():
        snap = next((s for s in snaps if s.get(k) is not None), snaps[0])
        out.setdefault(object_of(k, snap), []).append(k)
    return out


def merge(
    repo,
    rev: str | None = None,
    *,
    ours: Mapping[str, bool] | None = None,
    theirs: Mapping[str, bool] | None = None,
    resolutions: Mapping[str, str] | None = None,
    message: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    before_commit: Callable[[Any], Mapping[str, Any] | None] | None = None,
    allow_fast_forward: bool = True,
) -> MergeResult:
    """Merge ``rev`` into the current branch (or continue the pending merge).

    ``resolutions`` maps conflicting objects (``species A``, ``item s/i``,
    or ``all``) to ``"ours"`` or ``"theirs"``. Raises :class:`MergeConflict`
    (nothing changed, merge left pending) while conflicts are unresolved.
    ``before_commit(txn)`` may stage more changes and return extra metadata.
    """
    res_map = {parse_object(k): v for k, v in (resolutions or {}).items()}
    for k, v in res_map.items():
        if v not in ("ours", "theirs"):
            raise InvalidInput("a resolution is 'ours' or 'theirs'", f"{k}={v}")
    state = merge_state(repo)
    head = repo.head()
    if head.commit is None:
        raise InvalidInput("nothing to merge into: the branch has no commit")
    if rev is None:
        if state is None:
            raise NotFound("no merge in progress; name the revision to merge")
        their_sha = state["theirs"]
        rev_name = state.get("rev", their_sha[:12])
    else:
        their_sha = repo.resolve(rev)
        rev_name = rev
        if state is not None and state["theirs"] != their_sha:
            raise ConflictError("another merge is in progress; resolve it or run `mrepo merge --abort`", state.get("rev"))
    if state is not None and state.get("ours") != head.commit:
        raise ConflictError("the branch moved since the merge started; run `mrepo merge --abort` and merge again", head.branch)
    idx = repo.index
    if idx.is_dirty():
        raise ConflictError("staged changes present; commit them or run `mrepo reset` first", "index")
    our_sha = head.commit
    branch_ref = f"refs/heads/{head.branch}" if head.branch else None
    if is_ancestor(repo, their_sha, our_sha):
        abort_merge(repo)
        return MergeResult(None, their_sha, their_sha, up_to_date=True)
    base = merge_base(repo, our_sha, their_sha)
    if base == our_sha and allow_fast_forward and before_commit is None:
        if branch_ref:
            repo.refs.set(branch_ref, their_sha, our_sha, message=f"merge {rev_name}: fast-forward", ident=repo.identity().encode())
        else:
            repo.refs.set_head(detached=their_sha, expected=our_sha)
        repo.index  # noqa: B018  (re-bases the clean staging area)
        abort_merge(repo)
        return MergeResult(their_sha, base, their_sha, fast_forward=True)
    sb, so, st = repo.snapshot_of(base), repo.snapshot_of(our_sha), repo.snapshot_of(their_sha)
    co, ct = changed_keys(sb, so), changed_keys(sb, st)
    go, gt = _group(co, (so, sb)), _group(ct, (st, sb))
    changes: dict[str, Entry | None] = {}
    taken: list[str] = []
    conflicts: list[str] = []
    resolved: dict[str, str] = {}
    for obj, tkeys in sorted(gt.items()):
        if obj == DERIVED:
            continue
        okeys = go.get(obj, [])
        keys = sorted(set(tkeys) | set(okeys))
        if not okeys:
            for k in tkeys:
                changes[k] = st.get(k)
            taken.append(obj)
            continue
        if all(so.get(k) == st.get(k) for k in keys):
            continue  # both sides made the same change
        side = res_map.get(obj) or res_map.get("all")
        if side is None:
            conflicts.append(obj)
            continue
        resolved[obj] = side
        if side == "theirs":
            for k in keys:
                changes[k] = st.get(k)
    # layout group metadata (zarr.json of data/, data/species/...) taken when only theirs has it
    for k in gt.get(DERIVED, []):
        if k.startswith(DATA + "/") and so.get(k) is None and st.get(k) is not None:
            changes[k] = st.get(k)
    unknown = [o for o in res_map if o != "all" and o not in conflicts and o not in resolved]
    if unknown:
        raise InvalidInput("no such conflicting object", ", ".join(unknown))
    if conflicts:
        atomic_write(
            _state_path(repo),
            json.dumps({"rev": rev_name, "theirs": their_sha, "ours": our_sha, "base": base, "branch": branch_ref, "conflicts": conflicts}, indent=1) + "\n",
        )
        shown = ", ".join(conflicts[:6]) + (f" and {len(conflicts) - 6} more" if len(conflicts) > 6 else "")
        raise MergeConflict(
            f"merge conflict: changed on both sides: {shown}; resolve with --ours/--theirs OBJECT (or all), or --abort",
            rev_name,
            conflicts,
        )
    txn = repo.transaction(head.branch) if head.branch else repo.transaction()
    try:
        if txn.base != our_sha:
            raise ConflictError("the branch moved during the merge; try again", head.branch)
        if changes:
            txn.set_entries(changes)
        extra_meta = dict(before_commit(txn) or {}) if before_commit else {}
        _rebuild_derived(txn, so, st, sb)
        meta = {
            "operation": "merge",
            "merged": their_sha,
            "base": base,
            "taken": taken,
            "resolutions": resolved,
            **(metadata or {}),
            **extra_meta,
        }
        msg = message or f"Merge {rev_name}"
        commit = txn.commit(msg, metadata=meta, extra_parents=[their_sha])
    finally:
        txn.discard()
    repo.index  # noqa: B018
    abort_merge(repo)
    return MergeResult(commit, base, their_sha, taken=taken, resolved=resolved)
