"""What a rendered drop scene is made of: :class:`SceneSpec` (everything that determines one
image) and :class:`SceneTruth` (what was drawn, exactly), with the names of drop classes, well
shapes, lights and "other" drops. :mod:`hil.scene` renders a spec; docs/hil-camera.md explains
the fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .scene_crystals import HABITS

DropClass = Literal["crystals", "precipitate", "clear", "other"]
DROP_CLASSES: tuple[DropClass, ...] = ("crystals", "precipitate", "clear", "other")
#: what an "other" drop shows instead of crystals or precipitate
WELL_SHAPES = ("round", "square", "none", "droplets")
#: "bright": transmitted white light (with ``colour``: between crossed polarisers); "uv":
#: tryptophan fluorescence under UV excitation (grey, dark field, protein glows)
LIGHTS = ("bright", "uv")
OTHER_KINDS = ("skin", "fibres", "dried", "phase")
#: a drop with at least this many fibres counts as "other" (fewer: still "clear")
FIBRE_TANGLE = 5


@dataclass(frozen=True)
class CrystalTruth:
    """One crystal as it appears in the image (a cluster is one crystal: its overall outline).

    ``id``: 1-based index of the crystal in the spec (stable while it grows in a growth cell);

    ``longest_um``: max Feret diameter of the outline x ``um_per_px``; ``aspect``: max Feret /
    min Feret width; ``angle_deg``: direction of the max Feret diameter, degrees in [0, 180) from
    +x towards +y (image down); ``bbox_px``: integer (x, y, w, h) enclosing the outline.
    """

    id: int
    habit: str
    centroid_px: tuple[float, float]
    bbox_px: tuple[int, int, int, int]
    area_px: float
    longest_um: float
    aspect: float
    angle_deg: float
    polygon_px: list[tuple[float, float]]
    size_um: float = 0.0  # the 3-D size asked for (the growth model's size)


@dataclass(frozen=True)
class SceneTruth:
    """What the image shows, exactly."""

    drop_class: DropClass
    crystals: list[CrystalTruth]
    um_per_px: float
    well_center_px: tuple[float, float]
    well_radius_px: float
    drop_polygon_px: list[tuple[float, float]]
    distractors: dict[str, int]
    other: str | None = None
    # only with the options that make them (empty otherwise, and then left out of to_dict()):
    salt_crystals: list[CrystalTruth] = field(default_factory=list)  # ``salt_crystals``
    droplets_px: list[list[tuple[float, float]]] = field(default_factory=list)  # a droplet chip

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("salt_crystals", "droplets_px"):
            if not out[key]:
                del out[key]
        return out


@dataclass(frozen=True)
class SceneSpec:
    """Everything that determines one image. ``None`` fields are drawn from the seed to suit
    ``drop_class``; explicit values win (the truth's class then follows what was drawn)."""

    width: int = 1280
    height: int = 960
    um_per_px: float = 2.0
    seed: int = 0
    drop_class: DropClass = "crystals"
    crystals: int | None = None
    habits: tuple[str, ...] = HABITS
    crystal_sizes_um: tuple[float, ...] | None = None  # per crystal; 0: not (yet) there
    crystal_habits: tuple[str, ...] | None = None  # per crystal (else drawn from ``habits``)
    crystal_max_um: tuple[float, ...] | None = None  # per crystal: room kept for it (growth)
    size_range_um: tuple[float, float] = (30.0, 250.0)
    precipitate: float | None = None  # 0..1
    skin: bool | None = None
    bubbles: int | None = None
    fibres: int | None = None
    other: str | None = None  # one of OTHER_KINDS (for drop_class "other")
    illumination: float = 0.25  # strength of the lighting gradient and vignette
    brightness: float = 0.82  # mean level of the clear well bottom (fraction of full scale)
    light_angle_deg: float | None = None
    blur_px: float = 0.8  # Gaussian sigma of the optics
    noise: float = 2.0  # sensor noise sigma in 8-bit grey levels at full scale
    jpeg_quality: int | None = None  # 8-bit only
    colour: bool = False  # BGR with polarised-light colours of birefringent crystals
    bit_depth: int = 8
    noise_seed: int | None = None  # per-frame noise (a camera changes it each capture)
    oversample: int = 1  # draw the optics this many times finer, then average (see render())
    # real-imager geometry (the defaults draw the round, whole well the models learnt from):
    well_shape: str = "round"  # "round", "square" (a sub-well, half side = the radius) or "none"
    well_zoom: float = 1.0  # > 1: well and drop this much larger, the well clipped by the frame
    drop_edge_soft: float = 0.0  # > 0: a broad shaded drop edge this fraction of its radius wide
    # more real imagers (hil/scene_imagers.py; all off by default, and then they draw nothing):
    droplets: int | None = None  # well_shape "droplets": how many droplets (None: 1-4, drawn)
    drop_meets_wall: bool = False  # well_shape "square": the drop fills a corner (VMXi-like)
    light: str = "bright"  # one of LIGHTS; "uv" gives a grey image (colour must be False)
    salt_crystals: int = 0  # salt crystals in the drop: crystals in bright field, dark in UV

    def __post_init__(self) -> None:
        if not (64 <= self.width <= 8192 and 64 <= self.height <= 8192):
            raise ValueError(f"image size must be 64..8192, got {self.width}x{self.height}")
        if self.um_per_px <= 0:
            raise ValueError("um_per_px must be > 0")
        if self.drop_class not in DROP_CLASSES:
            raise ValueError(f"drop_class must be one of {DROP_CLASSES}")
        if not 1 <= self.oversample <= 8:
            raise ValueError("oversample must be 1..8")
        if self.bit_depth not in (8, 16):
            raise ValueError("bit_depth must be 8 or 16")
        for h in (*self.habits, *(self.crystal_habits or ())):
            if h not in HABITS:
                raise ValueError(f"unknown habit {h!r}; known: {HABITS}")
        if not self.habits:
            raise ValueError("habits must not be empty")
        if self.other is not None and self.other not in OTHER_KINDS:
            raise ValueError(f"other must be one of {OTHER_KINDS}")
        if self.precipitate is not None and not 0 <= self.precipitate <= 1:
            raise ValueError("precipitate must be in 0..1")
        lo, hi = self.size_range_um
        if not 0 < lo <= hi:
            raise ValueError("size_range_um must be (min, max) with 0 < min <= max")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be 1..100")
        if self.well_shape not in WELL_SHAPES:
            raise ValueError(f"well_shape must be one of {WELL_SHAPES}")
        if not 0.5 <= self.well_zoom <= 4.0:
            raise ValueError("well_zoom must be 0.5..4")
        if not 0.0 <= self.drop_edge_soft <= 0.6:
            raise ValueError("drop_edge_soft must be 0..0.6")
        if self.droplets is not None and not (
            self.well_shape == "droplets" and 1 <= self.droplets <= 8
        ):
            raise ValueError("droplets must be 1..8, with well_shape 'droplets'")
        if self.drop_meets_wall and self.well_shape != "square":
            raise ValueError("drop_meets_wall needs well_shape 'square'")
        if self.light not in LIGHTS:
            raise ValueError(f"light must be one of {LIGHTS}")
        if self.light == "uv" and self.colour:
            raise ValueError("light 'uv' gives a grey image: colour must be False")
        if not 0 <= self.salt_crystals <= 20:
            raise ValueError("salt_crystals must be 0..20")
