"""Model bundle: the framework-neutral artefact the trainer publishes and everyone else loads.

Layout of a bundle directory:
    manifest.json        Manifest below (version, dim, towers, metrics, training config, sha256s); the version ends in
                         the manifest's own content digest, so whoever holds a version pins the bundle's content
    tokenizer.json       Hugging Face `tokenizers` file, shared by both towers
    product.int8.onnx    product tower: (input_ids, attention_mask) int64 (batch, seq) -> embedding (batch, dim)
    query.int8.onnx      query tower, same signature, same embedding space (may be a distilled student)
    lexical.json         optional hashed-BM25 block appended to both towers' vectors (m5core/lexical.py)

The ONNX graphs do pooling, projection and L2 normalisation themselves, so the runtime side is
only tokenize -> run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


class BundleError(RuntimeError):
    """A bundle that is missing, corrupt or does not match what it is paired with."""


class TowerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    onnx: str
    """File name inside the bundle."""
    layers: int = 0
    hidden: int = 0
    max_length: int = 128
    distilled_from: str | None = None


class FinetuneRef(BaseModel):
    """The served product tower's weights, for partners who fine-tune from the bundle (`m5 partner finetune`): a
    safetensors state dict and the JSON that rebuilds the model around it (never a pickle: loading runs no code)."""

    model_config = ConfigDict(extra="forbid")

    weights: str = "finetune.safetensors"
    config: str = "finetune.json"
    tower: Literal["product"] = "product"


class LexicalRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = "lexical.json"
    dims: int = Field(gt=0)


VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""A bundle version is a plain name: it becomes a directory and a Redis namespace suffix, and arrives from the store."""


def check_version(version: str) -> str:
    """Raises BundleError for a version that is not a plain name (`../x`, `a/b`, empty): it never reaches a path."""
    if not isinstance(version, str) or not re.fullmatch(VERSION_PATTERN, version):
        raise BundleError(f"bundle version {version!r} is not a plain name (letters, digits, '.', '_', '-'; at most 128)")
    return version


class DuplicateThreshold(BaseModel):
    """The cosine above which two products are called duplicates, calibrated at export on labelled pairs of the
    validation split (never test) to a target precision, with what it reached there."""

    model_config = ConfigDict(extra="forbid")

    threshold: float
    precision: float
    recall: float
    target_precision: float
    pairs: int
    positives: int
    split: str = "valid"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["m5-bundle/1"] = "m5-bundle/1"
    name: str = "m5"
    version: str = Field(pattern=VERSION_PATTERN)
    """Unique bundle version; stored with every vector so a mismatched query tower is detected."""
    created_at: float
    dim: int = Field(gt=0)
    """Dimensions of the served vector: the towers' dense output plus the lexical block's, if any."""
    pooling: Literal["cls", "mean"] = "mean"
    render_scheme: Literal["plain", "fields"] = "fields"
    quantization: Literal["int8", "fp32"] = "int8"
    tokenizer: str = "tokenizer.json"
    towers: dict[Literal["product", "query"], TowerSpec]
    lexical: LexicalRef | None = None
    duplicates: DuplicateThreshold | None = None
    """Served duplicate detection's threshold (`GET /asin/{asin}/duplicates`); None: not calibrated (no labelled pairs)."""
    finetune: FinetuneRef | None = None
    """Fine-tunable weights carried by the bundle (`export.finetunable`); None: a serving-only bundle."""
    metrics: dict[str, Any] = Field(default_factory=dict)
    training_config: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    """sha256 of every file in the bundle, checked on load."""

    @model_validator(mode="after")
    def _dense_part_left(self) -> Manifest:
        if self.lexical and self.lexical.dims >= self.dim:
            raise ValueError(f"lexical.dims {self.lexical.dims} leaves no dense part of dim {self.dim}")
        return self

    @property
    def dense_dim(self) -> int:
        """Dimensions the ONNX towers output."""
        return self.dim - (self.lexical.dims if self.lexical else 0)


PINNED = re.compile(r"-([0-9a-f]{16})$")
"""A version ending in 16 hex digits names its manifest's content (`content_digest`): whoever holds the version (every
stored vector, the namespace it lives in) pins the bundle's content, and a bundle that does not hash to it is refused."""


LATER_FIELDS = ("duplicates", "finetune")
"""Manifest fields added after versions were pinned: left out of the digest while unset, so a bundle published
before a field existed keeps the version it was published under."""


def content_digest(manifest: Manifest) -> str:
    """sha256 of the manifest with its version blanked: the manifest lists every file's sha256, so this covers them all."""
    unset = {f for f in LATER_FIELDS if getattr(manifest, f) is None}
    return hashlib.sha256(manifest.model_copy(update={"version": "-"}).model_dump_json(exclude=unset).encode()).hexdigest()


def pinned_version(prefix: str, manifest: Manifest) -> str:
    return f"{prefix}-{content_digest(manifest)[:16]}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(bundle_dir: Path | str, verify: bool = True) -> Manifest:
    """Read and check a bundle's manifest.

    Raises:
        BundleError: missing manifest or files, or a sha256 that does not match.
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"no bundle at {bundle_dir}: {MANIFEST} is missing (train one with `m5 train all` or `make demo`)")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise BundleError(f"{path}: invalid manifest: {exc}") from exc
    if verify:
        pin = PINNED.search(manifest.version)
        if pin is None:
            log.warning("bundle %s predates content-pinned versions: its files are checked, its manifest is not", manifest.version)
        elif content_digest(manifest)[:16] != pin.group(1):
            raise BundleError(f"bundle {manifest.version}: {MANIFEST} does not hash to its version (edited or tampered with); refusing it")
        for name, digest in manifest.files.items():
            f = bundle_dir / name
            if not f.is_file():
                raise BundleError(f"bundle {manifest.version}: file {name} is missing")
            if sha256_file(f) != digest:
                raise BundleError(f"bundle {manifest.version}: sha256 of {name} does not match the manifest")
    return manifest


def write_manifest(bundle_dir: Path | str, manifest: Manifest) -> Manifest:
    """Hash every file in the bundle into the manifest and write it atomically."""
    bundle_dir = Path(bundle_dir)
    files = {p.name: sha256_file(p) for p in sorted(bundle_dir.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = manifest.model_copy(update={"files": files})
    atomic_write_bytes(bundle_dir / MANIFEST, manifest.model_dump_json(indent=2).encode())
    return manifest


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; readers are often other users (containers)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
