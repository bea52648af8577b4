import numpy as np
import pytest
from PIL import Image

from model.qa import CONTOUR_RGB, PICTURE_SIZE, TITLE_BAND, edge_letters, write_qa_png


def _block_ct(superior_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return a CT of air with a bright block off the centre of every axis, and the block's mask."""
    ct = np.full((30, 120, 100), -1000.0, dtype=np.float32)
    mask = np.zeros(ct.shape, dtype=np.uint8)
    superior = slice(20, 27) if superior_last else slice(3, 10)
    mask[superior, 15:45, 60:85] = 1
    ct[mask > 0] = 1000.0
    return ct, mask


def _views(path) -> list[np.ndarray]:
    """Return the three drawn views, each cut to the box of its black (air) pixels."""
    with Image.open(path) as image:
        assert image.size == PICTURE_SIZE
        pixels = np.asarray(image.convert("RGB"))
    third = PICTURE_SIZE[0] // 3
    views = []
    for panel in range(3):
        area = pixels[TITLE_BAND:, panel * third : (panel + 1) * third]
        top, bottom, left, right = _box(np.all(area == 0, axis=-1))
        views.append(area[top : bottom + 1, left : right + 1])
    return views


def _box(where: np.ndarray) -> tuple[int, int, int, int]:
    rows, columns = np.nonzero(where)
    return int(rows.min()), int(rows.max()), int(columns.min()), int(columns.max())


@pytest.mark.parametrize("superior_last", [True, False])
def test_contour_on_structure_in_all_views(tmp_path, superior_last):
    ct, mask = _block_ct(superior_last)
    path = tmp_path / "qa.png"
    write_qa_png(ct, mask, (3.0, 1.0, 1.0), path, superior_last, None)

    for view in _views(path):
        red = np.all(view == CONTOUR_RGB, axis=-1)
        bright = np.all(view >= 250, axis=-1)  # the block, windowed to white
        assert red.any()
        # The outline is drawn on the block's own edge pixels.
        assert np.abs(np.subtract(_box(red), _box(bright | red))).max() <= 1


@pytest.mark.parametrize("superior_last", [True, False])
def test_head_is_drawn_at_the_top(tmp_path, superior_last):
    ct, mask = _block_ct(superior_last)  # the block sits at the superior end
    path = tmp_path / "qa.png"
    write_qa_png(ct, mask, (3.0, 1.0, 1.0), path, superior_last, None)

    for view in _views(path)[1:]:  # coronal and sagittal
        block = np.all(view >= 250, axis=-1) | np.all(view == CONTOUR_RGB, axis=-1)
        assert np.nonzero(block.any(axis=1))[0].max() < view.shape[0] / 2


def test_empty_mask_draws_no_contour(tmp_path):
    ct, mask = _block_ct(True)
    path = tmp_path / "qa.png"
    write_qa_png(ct, np.zeros_like(mask), (3.0, 1.0, 1.0), path, True, None)
    for view in _views(path):
        assert not np.all(view == CONTOUR_RGB, axis=-1).any()


def test_edge_letters_of_a_head_first_supine_grid():
    identity = np.eye(3)  # W along patient left, H posterior, D superior
    assert edge_letters(identity, 1, 2, rows_point_up=False) == {"right": "L", "left": "R", "top": "A", "bottom": "P"}
    assert edge_letters(identity, 0, 2, rows_point_up=True) == {"right": "L", "left": "R", "top": "S", "bottom": "I"}
    assert edge_letters(identity, 0, 1, rows_point_up=True) == {"right": "P", "left": "A", "top": "S", "bottom": "I"}
    # Feet first: D runs inferior, so drawing the first row at the top puts the head there.
    feet_first = np.diag([1.0, 1.0, -1.0])
    assert edge_letters(feet_first, 0, 2, rows_point_up=False)["top"] == "S"
