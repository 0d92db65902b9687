"""H&E image access. CONTRACT (to be implemented by the io work package).

class Slide:
    path: Path
    dimensions: tuple[int, int]                 # level-0 (width, height) in px
    level_count: int
    level_dimensions: list[tuple[int, int]]     # (w, h) per level, level 0 first
    level_downsamples: list[float]
    um_per_px: float | None                     # level-0 resolution if the file states it
    um_per_px_source: str | None                # e.g. "tiff-resolution", "openslide-mpp"
    scale: float                                # image px per *level-0 coordinate* px (1.0 normally;
                                                # <1 when only a Space Ranger hires/lowres image exists)
    def read_region(self, centre_px, field_um, out_px, *, um_per_px=None) -> tuple[np.ndarray, bool]
        # centre in level-0 coordinate px (x, y); returns (out_px, out_px, 3) uint8 RGB and a flag
        # `padded` that is True when the crop ran past the image edge (padded with white).
        # Reads from the pyramid level closest above the needed resolution.
    def thumbnail(self, max_px: int) -> tuple[np.ndarray, float]   # RGB array and its px per level-0 px
    def close(self) -> None

def open_slide(path, *, um_per_px=None, scale=1.0) -> Slide
"""
