"""Symmetrization: resample a CT into a frame whose mid-sagittal plane is x = 0.

Two modes share one output contract (:class:`SymmetricVolume`):

``atlas``
    Registration of the CT to a left-right symmetric head atlas, as in the SATs paper. It
    removes head pose, tilt and size differences (a similarity transform by default, an
    affine one on request). The plane is then refined by the CT's own mirror symmetry.
``self``
    Rigid registration of the CT to its own mirror image. The composition of the mirror
    and the registration is a reflection whose plane is the mid-sagittal plane. This needs
    no atlas, so it suits neck-only scans or an unusual field of view.

In both modes ``transform`` maps a point of the symmetric frame to the input CT's patient
frame (LPS, mm). That is the transform SimpleITK's resampler needs to pull the CT into
the symmetric frame, and its inverse is applied implicitly by resampling predictions from
the symmetric grid back onto the CT grid (:func:`to_input_grid`).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from model.errors import InputError, SymmetrizationError
from model.geometry import AIR_HU, corner_points, make_grid, to_array, to_image

logger = logging.getLogger(__name__)

MODES = ("atlas", "self")
TRANSFORM_TYPES = ("similarity", "affine")

#: HU threshold separating the body from air for masks and centring.
BODY_HU = -500.0

#: Self-mode registration runs on copies resampled to this isotropic spacing (mm).
REGISTRATION_SPACING_MM = 4.0

#: Atlas mode matches the CT to the atlas at the coarse spacing (mm) and refines the
#: mid-sagittal plane by the CT's own mirror symmetry at the fine one.
ATLAS_MATCH_SPACING_MM = 16.0
PLANE_REFINE_SPACING_MM = 8.0

#: Largest accepted change (degrees) of the plane by the mirror refinement. On real CTs
#: the atlas match alone leaves the plane within about 8 degrees. A larger change means
#: that the refinement has locked onto something other than the head's symmetry.
MAX_PLANE_REFINEMENT_DEG = 15.0

#: Accepted range of the scale factors of an atlas registration. Outside it the
#: registration has almost certainly matched the wrong anatomy.
ATLAS_SCALE_RANGE = (0.5, 1.6)

#: Largest accepted angle (degrees) between the found plane normal and the CT's x axis.
#: Planning CTs are set up close to the sagittal plane; a larger angle means failure.
MAX_PLANE_ANGLE_DEG = 30.0


@dataclass
class MidSagittalPlane:
    """Plane n . p = offset in the input CT's patient frame (LPS, mm), with unit normal n."""

    normal: np.ndarray
    offset_mm: float

    def angle_to(self, other: MidSagittalPlane) -> float:
        """Return the angle between the two planes' normals in degrees (0 to 90)."""
        cosine = abs(float(np.dot(self.normal, other.normal)))
        return math.degrees(math.acos(min(1.0, cosine)))

    def pulled_back(self, transform: sitk.Transform) -> MidSagittalPlane:
        """Return this plane in the frame of an image resampled through ``transform``.

        An image made by ``sitk.Resample(ct, grid, transform)`` shows at point ``p`` what
        ``ct`` shows at ``transform(p)``. The returned plane is the set of points ``p``
        whose ``transform(p)`` lies on this plane. ``transform`` must be linear.
        """
        matrix, translation = _affine_parts(transform)
        normal = matrix.T @ self.normal
        scale = float(np.linalg.norm(normal))
        return MidSagittalPlane(normal / scale, float((self.offset_mm - self.normal @ translation) / scale))

    def distance_at(self, point: Sequence[float], other: MidSagittalPlane) -> float:
        """Return how far apart the planes are (mm) along this normal through ``point``.

        Both planes are intersected with the line through ``point`` along this plane's
        normal; the result is the distance between the two intersections.
        """
        p = np.asarray(point, dtype=np.float64)
        n = self.normal
        own = p + (self.offset_mm - n @ p) * n
        denominator = float(other.normal @ n)
        if abs(denominator) < 1e-6:
            return math.inf
        step = (other.offset_mm - other.normal @ p) / denominator
        theirs = p + step * n
        return float(np.linalg.norm(theirs - own))


@dataclass
class SymmetricVolume:
    """A CT resampled into the symmetric frame.

    Attributes
    ----------
    image
        CT in HU on a grid with identity direction; column centres are symmetric about
        x = 0, the mid-sagittal plane, so flipping the W axis mirrors the anatomy.
    transform
        Maps symmetric-frame points to the input CT's patient frame.
    plane
        The mid-sagittal plane in the input CT's patient frame.
    mode
        ``"atlas"`` or ``"self"``.
    metric
        Final registration metric value (lower is better for both metrics used).
    """

    image: sitk.Image
    transform: sitk.AffineTransform
    plane: MidSagittalPlane
    mode: str
    metric: float


def _check_ct(ct: sitk.Image) -> None:
    if ct.GetDimension() != 3:
        raise InputError(f"expected a 3-D CT, got {ct.GetDimension()}-D", code="volume.dimension")
    size = ct.GetSize()
    if min(size) < 2:
        raise InputError(
            f"CT grid {size} (x, y, z) is too small to symmetrize; at least 2 voxels per axis are needed",
            code="volume.too_small",
        )


def _registration_copy(ct: sitk.Image, spacing_mm: float = REGISTRATION_SPACING_MM) -> sitk.Image:
    """Return a smoothed float copy of ``ct`` at isotropic ``spacing_mm``, HU clipped to [-1024, 1500]."""
    # Average whole blocks of voxels first (8 x 8 x 2 for a 1 x 1 x 3 mm CT at 8 mm), before
    # any other pass over the full-resolution CT. Converting, clipping or smoothing all of
    # it took most of the symmetrization time. The block mean is itself a low-pass filter,
    # so the Gaussian only covers the remaining gap.
    factors = [max(1, int(spacing_mm // s)) for s in ct.GetSpacing()]
    image = sitk.BinShrink(ct, factors) if max(factors) > 1 else ct
    image = sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, AIR_HU, 1500.0)
    old_spacing = np.asarray(image.GetSpacing())
    sigma = [max(0.0, (spacing_mm - s) / 2.0) for s in old_spacing]
    if max(sigma) > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigma])
    old_size = np.asarray(image.GetSize())
    new_size = [max(2, int(round(n * s / spacing_mm))) for n, s in zip(old_size, old_spacing, strict=True)]
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [spacing_mm] * 3,
        image.GetDirection(),
        AIR_HU,
        sitk.sitkFloat32,
    )


def _body_centroid(image: sitk.Image) -> np.ndarray:
    """Return the centroid (LPS, mm) of voxels above :data:`BODY_HU`."""
    array = to_array(image)
    indices = np.argwhere(array > BODY_HU)
    if len(indices) == 0:
        raise InputError(
            f"no voxel above {BODY_HU} HU: the volume contains no body to symmetrize",
            code="volume.no_body",
        )
    centre_dhw = indices.mean(axis=0)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(centre_dhw[::-1].tolist()))


def _affine_parts(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(A, b)`` with ``transform(p) = A p + b`` for a linear SimpleITK transform."""
    dimension = 3
    b = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.asarray(transform.TransformPoint(tuple(np.eye(dimension)[i]))) - b for i in range(3)]
    return np.stack(columns, axis=1), b


def _as_affine(matrix: np.ndarray, translation: np.ndarray) -> sitk.AffineTransform:
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix.ravel().tolist())
    transform.SetTranslation(translation.tolist())
    return transform


def _frame_from_plane(plane: MidSagittalPlane, anchor: np.ndarray) -> sitk.AffineTransform:
    """Build the rigid map from a frame with the plane at x = 0 to the input frame.

    The frame's x axis is the plane normal, its y and z axes are the input's y and z
    axes rotated minimally, and its origin is the projection of ``anchor`` on the plane.
    """
    n = plane.normal / np.linalg.norm(plane.normal)
    rotation = _rotation_onto(np.array([1.0, 0.0, 0.0]), n)
    origin = anchor + (plane.offset_mm - n @ anchor) * n
    return _as_affine(rotation, origin)


def _rotation_onto(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Return the smallest rotation matrix that turns unit vector ``source`` onto unit vector ``target``."""
    axis = np.cross(source, target)
    sine = float(np.linalg.norm(axis))
    if sine < 1e-12:
        return np.eye(3)
    k = axis / sine
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + sine * cross + (1.0 - float(source @ target)) * cross @ cross


def _plane_from_reflection(matrix: np.ndarray, translation: np.ndarray, point: np.ndarray) -> MidSagittalPlane:
    """Fit the plane of an (approximate) reflection ``p -> matrix p + translation``."""
    symmetric = (matrix + matrix.T) / 2
    eigenvalues, eigenvectors = np.linalg.eigh(symmetric)
    normal = eigenvectors[:, int(np.argmin(eigenvalues))]
    if normal[0] < 0:
        normal = -normal
    midpoint = (point + matrix @ point + translation) / 2
    return MidSagittalPlane(normal=normal, offset_mm=float(normal @ midpoint))


def _plane_from_frame(transform: sitk.AffineTransform) -> MidSagittalPlane:
    """Return the image of the plane x = 0 of the symmetric frame in the input frame."""
    matrix, translation = _affine_parts(transform)
    normal = np.linalg.inv(matrix).T @ np.array([1.0, 0.0, 0.0])
    normal /= np.linalg.norm(normal)
    if normal[0] < 0:
        normal = -normal
    return MidSagittalPlane(normal=normal, offset_mm=float(normal @ translation))


def _check_plane(plane: MidSagittalPlane) -> None:
    angle = math.degrees(math.acos(min(1.0, abs(float(plane.normal[0])))))
    if angle > MAX_PLANE_ANGLE_DEG:
        raise SymmetrizationError(
            f"the mid-sagittal plane found is {angle:.1f} degrees from the sagittal plane "
            f"(limit {MAX_PLANE_ANGLE_DEG}); check that the series is a head-and-neck CT, or try "
            "the other symmetrization mode",
            code="symmetry.implausible_plane",
        )


def _correlation_registration() -> sitk.ImageRegistrationMethod:
    """Return a registration by normalised correlation on a regular grid of a quarter of the voxels."""
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsCorrelation()
    registration.SetMetricSamplingStrategy(registration.REGULAR)
    registration.SetMetricSamplingPercentage(0.25, seed=1)
    registration.SetInterpolator(sitk.sitkLinear)
    return registration


def _coarse_yaw_search(fixed: sitk.Image, moving: sitk.Image, centre: np.ndarray) -> sitk.Euler3DTransform:
    """Return the rotation about z (every 2.5 degrees within +-30) that best matches the images.

    The mirror image of a head turned by an angle a is turned by -a, so the registration
    must find a rotation of 2a. Gradient descent alone stalls beyond a few degrees on
    smooth outlines.
    """
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre.tolist())
    search = _correlation_registration()
    steps = 12
    search.SetOptimizerAsExhaustive(numberOfSteps=[0, 0, steps, 0, 0, 0], stepLength=math.radians(2.5))
    search.SetOptimizerScales([1.0] * 6)
    search.SetShrinkFactorsPerLevel([2])
    search.SetSmoothingSigmasPerLevel([1.0])
    search.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    search.SetInitialTransform(initial, inPlace=False)
    # SimpleITK leaves an exhaustive search at the position of the best metric value.
    best = search.Execute(fixed, moving)
    found = sitk.Euler3DTransform()
    found.SetCenter(centre.tolist())
    found.SetParameters(sitk.CompositeTransform(best).GetNthTransform(0).GetParameters())
    return found


def find_plane_self(ct: sitk.Image) -> tuple[MidSagittalPlane, float]:
    """Find the mid-sagittal plane by rigid registration of the CT to its own mirror image.

    Returns
    -------
    tuple
        The plane in the CT's patient frame and the final registration metric
        (negative normalised correlation, -1 is a perfect match).
    """
    _check_ct(ct)
    fixed = _registration_copy(ct)
    centre = _body_centroid(fixed)
    mirror = _as_affine(np.diag([-1.0, 1.0, 1.0]), np.array([2 * centre[0], 0.0, 0.0]))
    moving = sitk.Resample(fixed, fixed, mirror, sitk.sitkLinear, AIR_HU)

    initial = _coarse_yaw_search(fixed, moving, centre)
    registration = _correlation_registration()
    registration.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=200, relaxationFactor=0.6
    )
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetShrinkFactorsPerLevel([2, 1])
    registration.SetSmoothingSigmasPerLevel([1.0, 0.0])
    registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    registration.SetInitialTransform(initial, inPlace=False)
    result = registration.Execute(fixed, moving)

    # The CT satisfies I(M(T(p))) ~ I(p), so S = M o T is its symmetry, a reflection.
    t_matrix, t_translation = _affine_parts(result)
    m_matrix, m_translation = _affine_parts(mirror)
    s_matrix = m_matrix @ t_matrix
    s_translation = m_matrix @ t_translation + m_translation
    plane = _plane_from_reflection(s_matrix, s_translation, centre)
    _check_plane(plane)
    return plane, float(registration.GetMetricValue())


def _block_mean(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Return ``image`` averaged over whole blocks of voxels that come closest to ``spacing_mm``."""
    factors = [max(1, round(spacing_mm / s)) for s in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _body_mask(image: sitk.Image) -> sitk.Image:
    """Return voxels above :data:`BODY_HU`, grown by two voxels so that the outline is inside."""
    return sitk.BinaryDilate(image > BODY_HU, [2] * 3)


def _sample_gradients_only(registration: sitk.ImageRegistrationMethod) -> None:
    """Compute image gradients at the sample points only.

    By default the metric first filters both whole images into gradient images, which
    cost more than all the iterations of a registration that samples a quarter of the body.
    """
    registration.SetMetricUseFixedImageGradientFilter(False)
    registration.SetMetricUseMovingImageGradientFilter(False)


def _step_descent(registration: sitk.ImageRegistrationMethod, iterations: int) -> None:
    """Use regular-step gradient descent that stops on step length alone.

    SimpleITK's default gradient tolerance (1e-4) is larger than the gradient of the
    normalised correlation near its optimum. It stopped mirror registrations after a few
    steps, several degrees short of the optimum, so a 0.01 mm step is the stopping
    criterion instead.
    """
    registration.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=0.01,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-12,
    )
    registration.SetOptimizerScalesFromPhysicalShift()


def _match_to_atlas(
    fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, iterations: int
) -> tuple[sitk.Transform, float]:
    """Run one Mattes mutual information registration on images already at their level.

    This match sets pose, size and tilt, and its plane is refined afterwards. Letting it
    run to a 0.01 mm step (:func:`_step_descent`) took half as long again and did not make
    the refined planes more repeatable.
    """
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    registration.SetMetricSamplingStrategy(registration.REGULAR)
    registration.SetMetricSamplingPercentage(0.25, seed=1)
    registration.SetMetricFixedMask(_body_mask(fixed))
    _sample_gradients_only(registration)
    registration.SetInterpolator(sitk.sitkLinear)
    registration.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.6
    )
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetInitialTransform(initial, inPlace=False)
    found = registration.Execute(fixed, moving)
    return found, float(registration.GetMetricValue())


def _refine_plane(image: sitk.Image, frame: sitk.AffineTransform) -> tuple[sitk.AffineTransform, float]:
    """Move the plane x = 0 of ``frame`` onto the plane of ``image``'s best mirror symmetry.

    ``image`` is the CT's registration copy and ``frame`` maps symmetric-frame points to
    it. The CT is mirrored across the plane that ``frame`` gives and registered rigidly
    to that mirror image. The composition is a reflection, and its plane replaces the
    first one. The frame is then rotated about a point of the first plane and shifted
    along the new normal, so that only the plane changes. The atlas match fixes pose and
    size but leaves the plane a few degrees off, differently for each head pose. The
    patient's own symmetry pins the plane down.

    Returns
    -------
    tuple
        The corrected frame and the final mirror metric (negative normalised correlation).

    Raises
    ------
    SymmetrizationError
        If the plane would turn by more than :data:`MAX_PLANE_REFINEMENT_DEG`.
    """
    first = _plane_from_frame(frame)
    n0 = first.normal
    reflection = np.eye(3) - 2.0 * np.outer(n0, n0)
    mirror_shift = 2.0 * first.offset_mm * n0
    mirror = _as_affine(reflection, mirror_shift)
    mirrored = sitk.Resample(image, image, mirror, sitk.sitkLinear, AIR_HU)
    centroid = _body_centroid(image)
    pivot = centroid - (n0 @ centroid - first.offset_mm) * n0

    initial = sitk.Euler3DTransform()
    initial.SetCenter(pivot.tolist())
    registration = _correlation_registration()
    registration.SetMetricFixedMask(_body_mask(image))
    _sample_gradients_only(registration)
    _step_descent(registration, iterations=200)
    registration.SetInitialTransform(initial, inPlace=False)
    rigid = registration.Execute(image, mirrored)

    # mirrored(R(p)) = image(S0(R(p))) ~ image(p): S0 o R is the CT's symmetry.
    r_matrix, r_translation = _affine_parts(rigid)
    plane = _plane_from_reflection(reflection @ r_matrix, reflection @ r_translation + mirror_shift, pivot)
    sign = 1.0 if plane.normal @ n0 >= 0 else -1.0
    n, offset = sign * plane.normal, sign * plane.offset_mm
    turned_deg = plane.angle_to(first)
    if turned_deg > MAX_PLANE_REFINEMENT_DEG:
        raise SymmetrizationError(
            f"the CT's mirror symmetry turned the atlas plane by {turned_deg:.1f} degrees "
            f"(limit {MAX_PLANE_REFINEMENT_DEG}); check that the series is a head-and-neck CT, or try "
            "the other symmetrization mode",
            code="symmetry.atlas_registration",
        )
    turn = _rotation_onto(n0, n)
    # G(p) = turn (p - pivot) + pivot + shift n maps the first plane onto the new one.
    shift = offset - n @ pivot
    matrix, translation = _affine_parts(frame)
    corrected = _as_affine(turn @ matrix, turn @ (translation - pivot) + pivot + shift * n)
    return corrected, float(registration.GetMetricValue())


def register_to_atlas(
    ct: sitk.Image, atlas: sitk.Image, transform_type: str = "similarity"
) -> tuple[sitk.AffineTransform, float]:
    """Register ``ct`` (moving) to ``atlas`` (fixed), then refine the plane by mirror symmetry.

    The similarity transform (rotation, translation, one scale) is fitted at 16 mm. With
    ``transform_type`` ``"affine"`` a 12-parameter fit at 8 mm follows, as in the SATs
    paper. Last, the plane x = 0 of the frame is moved onto the plane of the CT's own
    best mirror symmetry at 8 mm (:func:`_refine_plane`).

    Returns
    -------
    tuple
        The transform from atlas points to CT points and the Mattes mutual information
        metric of the atlas match (more negative is better).

    Raises
    ------
    SymmetrizationError
        If the scale factors fall outside :data:`ATLAS_SCALE_RANGE`.
    """
    if transform_type not in TRANSFORM_TYPES:
        raise InputError(f"transform_type must be one of {TRANSFORM_TYPES}, got {transform_type!r}")
    _check_ct(ct)
    fine = _registration_copy(ct, PLANE_REFINE_SPACING_MM)
    coarse = _block_mean(fine, ATLAS_MATCH_SPACING_MM)
    atlas_fine = _block_mean(sitk.Cast(atlas, sitk.sitkFloat32), PLANE_REFINE_SPACING_MM)
    atlas_coarse = _block_mean(atlas_fine, ATLAS_MATCH_SPACING_MM)

    # Start from a translation that puts the body centroids together.
    atlas_centre = _body_centroid(atlas_fine)
    similarity = sitk.Similarity3DTransform()
    similarity.SetCenter(atlas_centre.tolist())
    similarity.SetTranslation((_body_centroid(fine) - atlas_centre).tolist())
    found, metric = _match_to_atlas(atlas_coarse, coarse, similarity, iterations=150)
    matrix, translation = _affine_parts(found)
    if transform_type == "affine":
        affine = sitk.AffineTransform(3)
        affine.SetCenter(atlas_centre.tolist())
        affine.SetMatrix(matrix.ravel().tolist())
        affine.SetTranslation((matrix @ atlas_centre + translation - atlas_centre).tolist())
        found, metric = _match_to_atlas(atlas_fine, fine, affine, iterations=150)
        matrix, translation = _affine_parts(found)
    _check_scales(matrix)
    frame, mirror_metric = _refine_plane(fine, _as_affine(matrix, translation))
    logger.debug("atlas metric %.4f, mirror metric %.4f", metric, mirror_metric)
    return frame, metric


def _check_scales(matrix: np.ndarray) -> None:
    scales = np.linalg.svd(matrix, compute_uv=False)
    if scales.min() < ATLAS_SCALE_RANGE[0] or scales.max() > ATLAS_SCALE_RANGE[1]:
        raise SymmetrizationError(
            f"atlas registration gave scale factors {np.round(scales, 2).tolist()}, outside "
            f"{list(ATLAS_SCALE_RANGE)}; the scan may not be a head-and-neck CT or may not fit "
            "the atlas field of view: try symmetrization mode 'self'",
            code="symmetry.atlas_registration",
        )


def symmetric_grid(ct: sitk.Image, transform: sitk.Transform, spacing_dhw_mm: Sequence[float]) -> sitk.Image:
    """Create the symmetric-frame grid that covers the whole CT field of view.

    Column centres are placed symmetrically about x = 0, so the W axis mirrors exactly.
    ``transform`` maps symmetric-frame points to CT points; it must be invertible.
    """
    inverse = transform.GetInverse()
    corners = np.array([inverse.TransformPoint(tuple(p)) for p in corner_points(ct)])
    spacing_z, spacing_y, spacing_x = (float(s) for s in spacing_dhw_mm)
    half_width = float(np.abs(corners[:, 0]).max())
    columns = 2 * int(math.ceil(half_width / spacing_x))
    low = corners.min(axis=0)
    high = corners.max(axis=0)
    rows = int(math.ceil((high[1] - low[1]) / spacing_y)) + 1
    slices = int(math.ceil((high[2] - low[2]) / spacing_z)) + 1
    origin = (-(columns - 1) / 2 * spacing_x, low[1], low[2])
    return make_grid((slices, rows, columns), spacing_dhw_mm, origin)


def resample_into(
    image: sitk.Image,
    grid: sitk.Image,
    transform: sitk.Transform,
    interpolator: int = sitk.sitkLinear,
    default: float = AIR_HU,
) -> sitk.Image:
    """Resample ``image`` onto ``grid`` with ``transform`` mapping grid points to image points.

    A voxel of ``grid`` outside ``image`` gets ``default``.
    """
    return sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), grid, transform, interpolator, float(default), sitk.sitkFloat32
    )


def symmetrize(
    ct: sitk.Image,
    spacing_dhw_mm: Sequence[float],
    mode: str = "atlas",
    atlas: sitk.Image | None = None,
    transform_type: str = "similarity",
) -> SymmetricVolume:
    """Resample ``ct`` into the symmetric frame at ``spacing_dhw_mm``.

    Parameters
    ----------
    ct
        CT in HU with its patient-frame geometry (any direction matrix).
    spacing_dhw_mm
        Output voxel spacing in mm, ``(D, H, W)``.
    mode
        ``"atlas"`` (needs ``atlas``) or ``"self"``.
    atlas
        Symmetric atlas whose mid-sagittal plane is x = 0 (see :mod:`model.atlas`).
    transform_type
        Atlas registration transform, ``"similarity"`` (default) or ``"affine"``.

    Notes
    -----
    The SATs paper registers to the atlas affinely. On 10 OpenKBP validation CTs the
    12-parameter fit collapsed the slice axis (scale 0.2 to 0.6) in 8 cases, because the
    CTs cover different lengths of the head and neck. The default is therefore the
    7-parameter similarity transform, which removes pose, tilt and head size.

    Raises
    ------
    InputError
        If the CT is not 3-D, has no body, or the mode is unknown.
    SymmetrizationError
        If registration fails or gives an implausible plane.
    """
    if mode not in MODES:
        raise InputError(f"symmetrization mode must be one of {MODES}, got {mode!r}", code="symmetry.mode")
    if len(spacing_dhw_mm) != 3 or min(spacing_dhw_mm) <= 0:
        raise InputError(f"spacing must be three positive values in mm, got {spacing_dhw_mm!r}")
    if mode == "atlas":
        if atlas is None:
            raise InputError("symmetrization mode 'atlas' needs an atlas image", code="symmetry.no_atlas")
        transform, metric = register_to_atlas(ct, atlas, transform_type)
        plane = _plane_from_frame(transform)
        _check_plane(plane)
    else:
        plane, metric = find_plane_self(ct)
        anchor = np.mean(corner_points(ct), axis=0)
        transform = _frame_from_plane(plane, anchor)

    grid = symmetric_grid(ct, transform, spacing_dhw_mm)
    image = resample_into(ct, grid, transform)
    logger.debug("symmetrized in %s mode, metric %.4f, grid %s", mode, metric, image.GetSize())
    return SymmetricVolume(image=image, transform=transform, plane=plane, mode=mode, metric=metric)


def to_input_grid(
    array: np.ndarray,
    symmetric: SymmetricVolume,
    reference: sitk.Image,
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
    nonzero_box: tuple[slice, slice, slice] | None = None,
) -> np.ndarray:
    """Resample a symmetric-frame ``(D, H, W)`` array back onto the CT grid ``reference``.

    Use linear interpolation for probabilities and threshold afterwards; the result is
    a float32 ``(D, H, W)`` array on the CT's own grid.

    ``nonzero_box`` declares that ``array`` equals ``default`` outside that index box
    (for example the body crop that inference ran on). Then only the CT voxels whose
    position maps into the box, plus a one-voxel margin, are resampled, and the rest
    are set to ``default``: the same result in a fraction of the time on a large CT.
    """
    if nonzero_box is None:
        source = to_image(array.astype(np.float32, copy=False), symmetric.image)
        return to_array(resample_into(source, reference, symmetric.transform.GetInverse(), interpolator, default))
    shape_dhw = tuple(reversed(reference.GetSize()))  # (x, y, z) -> (D, H, W)
    result = np.full(shape_dhw, default, dtype=np.float32)
    region, values = resample_region(array, symmetric, reference, nonzero_box, interpolator, default)
    if region is not None:
        result[region] = values
    return result


def resample_region(
    array: np.ndarray,
    symmetric: SymmetricVolume,
    reference: sitk.Image,
    nonzero_box: tuple[slice, slice, slice],
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
) -> tuple[tuple[slice, slice, slice] | None, np.ndarray]:
    """Resample a symmetric-frame array onto the part of the CT grid that ``nonzero_box`` maps to.

    Returns the ``(D, H, W)`` slices of the CT grid and the float32 values there; outside
    them :func:`to_input_grid` would give ``default``. The slices are ``None`` (and the
    values empty) when the box maps outside the CT.
    """
    low, high = _input_region(symmetric, nonzero_box, reference)
    if np.any(high <= low):
        return None, np.zeros((0, 0, 0), dtype=np.float32)
    source = to_image(array.astype(np.float32, copy=False), symmetric.image)
    region = sitk.Image([int(v) for v in high - low], sitk.sitkFloat32)
    region.SetSpacing(reference.GetSpacing())
    region.SetDirection(reference.GetDirection())
    region.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in low]))
    values = to_array(resample_into(source, region, symmetric.transform.GetInverse(), interpolator, default))
    slices = tuple(slice(int(low[axis]), int(high[axis])) for axis in (2, 1, 0))  # (x, y, z) bounds -> (D, H, W)
    return slices, values  # type: ignore[return-value]


def _input_region(
    symmetric: SymmetricVolume, box: tuple[slice, slice, slice], reference: sitk.Image
) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``[low, high)`` (x, y, z) index bounds of the CT voxels that map into a symmetric-frame box."""
    corners = itertools.product(*[(part.start - 1, part.stop) for part in box])  # one voxel of margin
    points = []
    for d, h, w in corners:
        symmetric_point = symmetric.image.TransformContinuousIndexToPhysicalPoint((float(w), float(h), float(d)))
        ct_point = symmetric.transform.TransformPoint(symmetric_point)
        points.append(reference.TransformPhysicalPointToContinuousIndex(ct_point))
    indices = np.asarray(points)
    size = np.asarray(reference.GetSize())
    low = np.clip(np.floor(indices.min(axis=0)).astype(int) - 1, 0, size)
    high = np.clip(np.ceil(indices.max(axis=0)).astype(int) + 2, 0, size)
    return low, high
