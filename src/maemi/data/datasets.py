"""Image datasets: class folders or a CSV manifest; inspection; leak-free stratified splits.

Layouts read by `scan_dataset`:
- class folders, `root/<class>/<image>`, as the SEM set of Aversa et al., NEU-SDD, KTH-TIPS and CMI ship; deeper
  folders are allowed (`root/<class>/<sample>/<image>`) and the top folder under the root is the class;
- images directly in `root` (a plain folder: no labels);
- a CSV manifest with a `path` column (relative to the CSV's folder, or absolute), and optional `label` and `group`
  columns.
A `metadata.jsonl` next to the images (as `maemi synth` writes) is merged into each sample by its relative path.

Splits keep one physical sample on one side: exact duplicates (same bytes) are grouped, and so are files that share a
group (a manifest `group` column, or a file-name pattern such as `^(wafer\\d+)_`). Random splits of such data report
accuracy the lab will never see.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from maemi.data.images import IMAGE_EXTENSIONS, ImageReadError, load_image, read_image_info

METADATA_FILE = "metadata.jsonl"


class DatasetError(ValueError):
    """A dataset that cannot be read as a whole (missing root, bad manifest)."""


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute path of the image file
    relpath: str  # path relative to the dataset root, posix separators: the sample's stable id
    label: str | None
    group: str | None = None  # from a manifest `group` column
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


def _is_hidden(parts: Iterable[str]) -> bool:
    # `_annotations`, `.git`, `__MACOSX` and the like hold no images of the dataset.
    return any(p.startswith((".", "_")) for p in parts)


def _read_metadata(root: Path) -> dict[str, dict]:
    meta_path = root / METADATA_FILE
    if not meta_path.is_file():
        return {}
    out: dict[str, dict] = {}
    with meta_path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{meta_path}:{n}: not valid JSON ({e.msg})") from None
            if "path" not in row:
                raise DatasetError(f"{meta_path}:{n}: a metadata row needs a 'path' key")
            out[row["path"]] = row
    return out


@functools.lru_cache(maxsize=32)
def _read_metadata_cached(root: str, mtime_ns: int) -> dict[str, dict]:
    return _read_metadata(Path(root))


def metadata_for(path: str | os.PathLike, levels: int = 4) -> dict:
    """The metadata.jsonl row of one image file, from the nearest folder above it (up to `levels`) whose
    metadata.jsonl lists it, as `maemi synth` writes one at its root; {} when none does or the file is unreadable
    (the scale then comes from the instrument's metadata or the scale bar)."""
    path = Path(path).absolute()
    for parent in list(path.parents)[:levels]:
        meta = parent / METADATA_FILE
        try:
            rows = _read_metadata_cached(str(parent), meta.stat().st_mtime_ns)
        except (OSError, DatasetError):
            continue
        row = rows.get(path.relative_to(parent).as_posix())
        if row is not None:
            return dict(row)
    return {}


def _scan_manifest(csv_path: Path) -> list[Sample]:
    base = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise DatasetError(f"{csv_path}: a manifest needs a 'path' column (found {reader.fieldnames})")
        rows = list(reader)
    metadata = _read_metadata(base)
    samples = []
    for row in rows:
        p = Path(row["path"])
        path = p if p.is_absolute() else base / p
        rel = p.as_posix() if not p.is_absolute() else path.as_posix()
        samples.append(
            Sample(path=path, relpath=rel, label=(row.get("label") or None), group=(row.get("group") or None),
                   metadata=metadata.get(rel, {}))
        )
    return samples


def scan_dataset(root: str | Path) -> list[Sample]:
    """Every image file of a dataset (by extension; readability is checked by `inspect_dataset`), sorted by path."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root}: expected a folder of images or a CSV manifest")
        return _scan_manifest(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    metadata = _read_metadata(root)
    samples = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_EXTENSIONS or _is_hidden(rel.parts) or not path.is_file():
            continue
        label = rel.parts[0] if len(rel.parts) > 1 else None
        samples.append(Sample(path=path, relpath=rel.as_posix(), label=label, metadata=metadata.get(rel.as_posix(), {})))
    return samples


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_samples(samples: list[Sample], progress: bool = False, scales: bool = False
                  ) -> tuple[list[Sample], list[dict], dict[str, dict]]:
    """Fully decode every image. Returns (readable samples, unreadable [{path, reason}], facts by relpath). With
    `scales`, facts also hold each image's scale source (maemi.measure.scale; reading a scale bar runs OCR)."""
    from skimage.color import rgb2gray

    from maemi.measure.scale import read_scale

    good, bad, facts = [], [], {}
    it = samples
    if progress:
        from tqdm import tqdm

        it = tqdm(samples, desc="reading", unit="img", leave=False)
    for s in it:
        try:
            info = read_image_info(s.path)
            image = load_image(s.path)  # a header can be fine while the data is truncated: decode it all
        except ImageReadError as e:
            bad.append({"path": s.relpath, "reason": e.reason})
            continue
        good.append(s)
        facts[s.relpath] = {"info": info, "sha256": file_sha256(s.path)}
        if scales:
            grey = image if image.ndim == 2 else rgb2gray(image).astype("float32")  # luminance, as load_grey
            facts[s.relpath]["scale_source"] = read_scale(s.path, grey, metadata=s.metadata).source
    return good, bad, facts


def inspect_dataset(root: str | Path, progress: bool = False) -> dict:
    """What a user wants to know before training on a folder: counts, sizes, formats, duplicates, unreadable files."""
    samples = scan_dataset(root)
    return inspection_report(root, samples, *check_samples(samples, progress=progress, scales=True))


def inspection_report(root: str | Path, samples: list[Sample], good: list[Sample], bad: list[dict],
                      facts: dict[str, dict]) -> dict:
    """inspect_dataset's report from check_samples' results (for callers that also split the same images)."""
    by_hash: dict[str, list[str]] = defaultdict(list)
    for s in good:
        by_hash[facts[s.relpath]["sha256"]].append(s.relpath)
    infos = [facts[s.relpath]["info"] for s in good]
    return {
        "root": str(root),
        "files": len(samples),
        "images": len(good),
        "classes": dict(sorted(Counter(s.label for s in good if s.label is not None).items())),
        "unlabelled": sum(s.label is None for s in good),
        "sizes": dict(Counter(f"{i.width}x{i.height}" for i in infos).most_common()),
        "formats": dict(Counter(i.format for i in infos).most_common()),
        "modes": dict(Counter(i.mode for i in infos).most_common()),
        "bit_depths": {str(k): v for k, v in sorted(Counter(i.bit_depth for i in infos).items())},
        "duplicates": sorted(sorted(paths) for paths in by_hash.values() if len(paths) > 1),
        # images with a scale, by source (maemi.measure.scale); "unknown": none could be trusted
        "scales": dict(Counter(facts[s.relpath].get("scale_source") or "unknown" for s in good
                               if "scale_source" in facts[s.relpath]).most_common()),
        "unreadable": bad,
    }


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # deterministic representative


def group_samples(samples: list[Sample], hashes: dict[str, str], group_pattern: str | None = None) -> list[list[Sample]]:
    """Groups that must stay on one side of a split: same bytes, same manifest group, or same file-name pattern match."""
    uf = _UnionFind()
    keys: dict[str, str] = {}
    pattern = re.compile(group_pattern) if group_pattern else None
    for s in samples:
        uf.find(s.relpath)
        for key in (
            f"sha256:{hashes[s.relpath]}" if s.relpath in hashes else None,
            f"group:{s.group}" if s.group else None,
        ):
            if key:
                uf.union(s.relpath, keys.setdefault(key, s.relpath))
        if pattern:
            m = pattern.search(Path(s.relpath).name)
            if m:
                key = "pattern:" + (m.group(1) if m.groups() else m.group(0))
                uf.union(s.relpath, keys.setdefault(key, s.relpath))
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[uf.find(s.relpath)].append(s)
    return [groups[k] for k in sorted(groups)]


def split_dataset(
    samples: list[Sample],
    hashes: dict[str, str],
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    group_pattern: str | None = None,
) -> dict:
    """A deterministic stratified split of groups: each class's groups are shuffled with `seed` and dealt to test,
    val and train until each reaches its share of that class's images."""
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"val ({val}) and test ({test}) must be >= 0 and sum to less than 1")
    by_class: dict[str, list[list[Sample]]] = defaultdict(list)
    for g in group_samples(samples, hashes, group_pattern):
        # A group that mixes labels (the same bytes filed under two classes) goes with its majority label.
        label = Counter(s.label or "" for s in g).most_common(1)[0][0]
        by_class[label].append(g)
    rng = random.Random(seed)
    assignment: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        groups = by_class[label]
        rng.shuffle(groups)
        n = sum(len(g) for g in groups)
        quota = {"test": round(n * test), "val": round(n * val)}
        filled = {"test": 0, "val": 0}
        for g in groups:
            side = next((k for k in ("test", "val") if filled[k] + len(g) <= quota[k] or filled[k] == 0 < quota[k]), "train")
            if side != "train":
                filled[side] += len(g)
            assignment[side].extend(s.relpath for s in g)
    labels = {s.relpath: s.label for s in samples}
    return {
        "seed": seed,
        "fractions": {"val": val, "test": test},
        "group_pattern": group_pattern,
        "counts": {k: dict(sorted(Counter(labels[p] or "" for p in v).items())) for k, v in assignment.items()},
        **{k: sorted(v) for k, v in assignment.items()},
    }
