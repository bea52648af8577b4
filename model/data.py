"""Training and evaluation datasets: discovery of the supported layouts and preprocessing.

Supported layouts (NIfTI, read with SimpleITK):

``nnunet``
    ``ROOT/imagesTr/CASE_0000.nii.gz`` and ``ROOT/labelsTr/CASE.nii.gz`` (``imagesTs`` and
    ``labelsTs`` for the test split). The tumour is every voxel equal to ``label_value``
    (default 1).
``segrap``
    SegRap2023: ``ROOT/<images>/segrap_NNNN/image.nii.gz`` (the non-contrast CT) and
    ``ROOT/<labels>/segrap_NNNN/GTVp.nii.gz``; the label folder is the one whose name
    ends in ``OneHot_Labels`` (its ``Task002`` subfolder when present). The tumour is the
    union of the structures named in ``structures`` (default GTVp and GTVnd).
``openkbp``
    ``ROOT/<split>/pt_N/ct.nii.gz`` and ``structures.nii.gz``; the tumour is the label
    value ``label_value`` (PTV70 = 10).

In the two label-map layouts, ``auxiliary_values`` names further label values whose union
is an auxiliary structure (for OpenKBP, PTV56 and PTV63 = 8 and 9). Training can learn it
as a second output beside the tumour.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from model.errors import InputError
from model.geometry import spacing_dhw, to_array
from model.preprocess import body_crop
from model.symmetry import SymmetricVolume, resample_into, symmetrize

logger = logging.getLogger(__name__)

LAYOUTS = ("nnunet", "segrap", "openkbp")
DEFAULT_LABEL_VALUES = {"nnunet": 1, "openkbp": 10}
DEFAULT_SEGRAP_STRUCTURES = ("GTVp", "GTVnd")


@dataclass(frozen=True)
class CaseFiles:
    """Files of one case: a CT in HU and the label images whose union is the tumour."""

    case_id: str
    image: Path
    labels: tuple[Path, ...]
    label_value: int | None = 1
    auxiliary_values: tuple[int, ...] = ()


@dataclass
class LoadedCase:
    """A case read from disk: CT in HU, binary tumour mask and optional auxiliary mask on the CT grid."""

    case_id: str
    ct: sitk.Image
    mask: sitk.Image
    auxiliary: sitk.Image | None = None


def _sorted_dirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name)


def resolve_label_value(layout: str, label_value: int | None) -> int:
    """Return ``label_value``, or the default of the label-map ``layout`` when it is None."""
    return DEFAULT_LABEL_VALUES[layout] if label_value is None else label_value


def target_definition(layout: str, label_value: int | None, structures: Sequence[str]) -> dict[str, Any]:
    """Return what defines the tumour in ``layout``, with defaults resolved, for model metadata.

    The label-map layouts give ``{"label_value": 10}`` and SegRap2023 gives
    ``{"structures": ["GTVp", ...]}``, so a checkpoint names its target without the reader
    knowing the layout's defaults.
    """
    if layout == "segrap":
        return {"structures": list(structures)}
    return {"label_value": resolve_label_value(layout, label_value)}


def discover(
    root: Path,
    layout: str,
    split: str,
    label_value: int | None = None,
    structures: Sequence[str] = DEFAULT_SEGRAP_STRUCTURES,
    auxiliary_values: Sequence[int] = (),
) -> list[CaseFiles]:
    """List the cases of ``root`` in ``layout``.

    Parameters
    ----------
    root
        Dataset folder.
    layout
        One of :data:`LAYOUTS`.
    split
        ``nnunet``: ``"Tr"`` or ``"Ts"``. ``openkbp``: the subfolder (``train``,
        ``validation``). ``segrap``: ignored.
    label_value
        Voxel value of the tumour (``nnunet`` default 1, ``openkbp`` default 10).
    structures
        SegRap2023 label files to unite.
    auxiliary_values
        Label values whose union is the auxiliary structure (label-map layouts only).

    Raises
    ------
    InputError
        If the folder or a case's label is missing, no case is found, or auxiliary values
        are given for SegRap2023 or include the tumour's label value.
    """
    if layout not in LAYOUTS:
        raise InputError(f"dataset layout must be one of {LAYOUTS}, got {layout!r}", code="data.layout")
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}", code="data.not_found")
    auxiliary = tuple(int(value) for value in auxiliary_values)
    if auxiliary and layout == "segrap":
        raise InputError(
            f"auxiliary label values {list(auxiliary)} need a label-map layout (nnunet or openkbp), not segrap",
            code="data.auxiliary",
        )
    if auxiliary:
        tumour_value = resolve_label_value(layout, label_value)
        if tumour_value in auxiliary:
            raise InputError(
                f"auxiliary label values {list(auxiliary)} include the tumour's label value {tumour_value}",
                code="data.auxiliary",
            )
    if layout == "nnunet":
        cases = _discover_nnunet(root, split, resolve_label_value(layout, label_value))
    elif layout == "openkbp":
        cases = _discover_openkbp(root, split, resolve_label_value(layout, label_value))
    else:
        cases = _discover_segrap(root, structures)
    if not cases:
        raise InputError(f"no cases found in {root} for layout {layout!r} split {split!r}", code="data.empty")
    if auxiliary:
        cases = [replace(case, auxiliary_values=auxiliary) for case in cases]
    return cases


def _discover_nnunet(root: Path, split: str, label_value: int) -> list[CaseFiles]:
    if split not in ("Tr", "Ts"):
        raise InputError(f"nnU-Net split must be 'Tr' or 'Ts', got {split!r}", code="data.split")
    images = root / f"images{split}"
    labels = root / f"labels{split}"
    if not images.is_dir():
        raise InputError(f"folder not found: {images}", code="data.not_found")
    cases = []
    for image in sorted(images.glob("*_0000.nii*")):
        case_id = image.name.split("_0000.nii")[0]
        suffix = image.name.split("_0000")[1]
        label = labels / f"{case_id}{suffix}"
        if not label.is_file():
            raise InputError(f"label not found for case {case_id}: expected {label}", code="data.missing_label")
        cases.append(CaseFiles(case_id, image, (label,), label_value))
    return cases


def _discover_openkbp(root: Path, split: str, label_value: int) -> list[CaseFiles]:
    folder = root / split
    if not folder.is_dir():
        raise InputError(f"OpenKBP split folder not found: {folder}", code="data.not_found")
    cases = []
    for case in _sorted_dirs(folder):
        image, label = case / "ct.nii.gz", case / "structures.nii.gz"
        if not image.is_file() or not label.is_file():
            raise InputError(
                f"case {case.name} lacks ct.nii.gz or structures.nii.gz in {case}", code="data.missing_label"
            )
        cases.append(CaseFiles(case.name, image, (label,), label_value))
    return cases


def _discover_segrap(root: Path, structures: Sequence[str]) -> list[CaseFiles]:
    label_roots = [p for p in _sorted_dirs(root) if p.name.endswith("OneHot_Labels")]
    image_roots = [p for p in _sorted_dirs(root) if p not in label_roots]
    if len(label_roots) != 1 or len(image_roots) != 1:
        raise InputError(
            f"SegRap2023 layout needs one image folder and one '*OneHot_Labels' folder in {root}, "
            f"found images {[p.name for p in image_roots]} and labels {[p.name for p in label_roots]}",
            code="data.layout",
        )
    label_root = label_roots[0] / "Task002" if (label_roots[0] / "Task002").is_dir() else label_roots[0]
    cases = []
    for case in _sorted_dirs(image_roots[0]):
        image = case / "image.nii.gz"
        if not image.is_file():
            continue
        labels = tuple(label_root / case.name / f"{name}.nii.gz" for name in structures)
        missing = [str(p) for p in labels if not p.is_file()]
        if missing:
            raise InputError(f"case {case.name}: label files not found: {missing}", code="data.missing_label")
        cases.append(CaseFiles(case.name, image, labels, None))
    return cases


def load_case(files: CaseFiles) -> LoadedCase:
    """Read a case; the mask is the union of the label files (value ``label_value`` or > 0).

    With ``auxiliary_values``, the auxiliary mask is the union of those values in the same
    label files.

    Raises
    ------
    InputError
        If a label's grid differs from the CT's grid.
    """
    ct = sitk.ReadImage(str(files.image), sitk.sitkFloat32)
    union: np.ndarray | None = None
    auxiliary: np.ndarray | None = None
    for path in files.labels:
        label = sitk.ReadImage(str(path))
        if label.GetSize() != ct.GetSize() or not np.allclose(label.GetSpacing(), ct.GetSpacing(), atol=1e-3):
            raise InputError(
                f"case {files.case_id}: label {path.name} grid {label.GetSize()} spacing "
                f"{label.GetSpacing()} differs from the CT grid {ct.GetSize()} spacing {ct.GetSpacing()}",
                code="data.grid_mismatch",
            )
        values = sitk.GetArrayFromImage(label)
        part = values == files.label_value if files.label_value is not None else values > 0
        union = part if union is None else union | part
        if files.auxiliary_values:
            extra = np.isin(values, files.auxiliary_values)
            auxiliary = extra if auxiliary is None else auxiliary | extra
    assert union is not None
    return LoadedCase(
        files.case_id,
        ct,
        _image_like(union, ct),
        None if auxiliary is None else _image_like(auxiliary, ct),
    )


def _image_like(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image


@dataclass
class PreparedCase:
    """A case in the symmetric frame, cropped to the body, as ``(D, H, W)`` arrays.

    ``image_hu`` is in HU (or normalised, after :func:`model.train.normalize_cases`),
    ``mask`` the binary tumour mask and ``auxiliary`` the optional binary auxiliary mask.
    """

    case_id: str
    image_hu: np.ndarray
    mask: np.ndarray
    info: dict[str, object] = field(default_factory=dict)
    auxiliary: np.ndarray | None = None


def prepare_case(
    case: LoadedCase, spacing_dhw_mm: Sequence[float], mode: str, atlas: sitk.Image | None
) -> PreparedCase:
    """Symmetrize, resample and body-crop a case exactly as inference does.

    The masks are resampled with linear interpolation and thresholded at 0.5.
    """
    symmetric: SymmetricVolume = symmetrize(case.ct, spacing_dhw_mm, mode=mode, atlas=atlas)
    image = to_array(symmetric.image)
    box = body_crop(image)

    def resample_mask(mask: sitk.Image) -> np.ndarray:
        resampled = to_array(resample_into(mask, symmetric.image, symmetric.transform, default=0.0))
        return (resampled[box.slices] >= 0.5).astype(np.uint8)

    return PreparedCase(
        case_id=case.case_id,
        image_hu=image[box.slices].astype(np.int16),
        mask=resample_mask(case.mask),
        info={"input_spacing_dhw": spacing_dhw(case.ct), "metric": symmetric.metric},
        auxiliary=None if case.auxiliary is None else resample_mask(case.auxiliary),
    )


#: Version of what :func:`prepare_case` computes. Raise it whenever symmetrization or
#: preprocessing changes its output, so that caches made by older code are not reused.
#: Version 2: atlas planes refined by mirror symmetry, registration at 16 and 8 mm.
PREPARATION_VERSION = 2


def cache_key(files: CaseFiles, spacing_dhw_mm: Sequence[float], mode: str, atlas_sha256: str | None) -> str:
    """Return a stable key for a prepared case, changing with every preprocessing input.

    Without auxiliary values the key is the one that code without them computed, so
    existing caches stay valid.
    """
    inputs: dict[str, Any] = {
        "files": [str(files.image), *map(str, files.labels)],
        "label": files.label_value,
        "spacing": list(map(float, spacing_dhw_mm)),
        "mode": mode,
        "atlas": atlas_sha256,
        "version": PREPARATION_VERSION,
    }
    if files.auxiliary_values:
        inputs["auxiliary"] = list(files.auxiliary_values)
    description = json.dumps(inputs, sort_keys=True)
    return hashlib.sha256(description.encode()).hexdigest()[:16]


def prepare_cached(
    files: CaseFiles,
    cache_dir: Path,
    spacing_dhw_mm: Sequence[float],
    mode: str,
    atlas: sitk.Image | None,
    atlas_sha256: str | None,
) -> PreparedCase:
    """Return the prepared case from ``cache_dir``, preparing and storing it when absent."""
    path = cache_dir / f"{files.case_id}-{cache_key(files, spacing_dhw_mm, mode, atlas_sha256)}.npz"
    if path.is_file():
        with np.load(path) as stored:
            auxiliary = stored["auxiliary"] if "auxiliary" in stored.files else None
            return PreparedCase(files.case_id, stored["image_hu"], stored["mask"], auxiliary=auxiliary)
    prepared = prepare_case(load_case(files), spacing_dhw_mm, mode, atlas)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    if prepared.auxiliary is None:
        np.savez_compressed(temporary, image_hu=prepared.image_hu, mask=prepared.mask)
    else:
        np.savez_compressed(temporary, image_hu=prepared.image_hu, mask=prepared.mask, auxiliary=prepared.auxiliary)
    temporary.replace(path)
    return prepared
