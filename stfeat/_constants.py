"""Every key name stfeat reads or writes, in one place (squidpy style)."""

# AnnData
SPATIAL_KEY = "spatial"  # obsm: spot centres, level-0 pixels, (x, y) order
UNS_KEY = "stfeat"  # uns: provenance dict (see Sample)

# uns["stfeat"] entries
U_SAMPLE_ID = "sample_id"
U_PATIENT = "patient"
U_FORMAT = "format"
U_UM_PER_PX = "um_per_px"
U_UM_PER_PX_SOURCE = "um_per_px_source"  # e.g. "tiff-resolution", "hest-metadata", "spot-lattice (estimated)"
U_IMAGE_PATH = "image_path"
U_IMAGE_SCALE = "image_scale"  # image pixels per level-0 pixel (1.0 for full resolution)
U_WARNINGS = "warnings"
U_SOURCE_PATH = "source_path"

# Physical constants of the assays
VISIUM_SPOT_DIAMETER_UM = 55.0
# Space Ranger's spot_diameter_fullres is the pixel span of a theoretical 65 um spot (55 um + margin)
VISIUM_SPOT_FULLRES_UM = 65.0
VISIUM_PITCH_UM = 100.0
LEGACY_ST_SPOT_DIAMETER_UM = 100.0
LEGACY_ST_PITCH_UM = 200.0

# Environment
ENV_SHARED_DATA = "STFEAT_SHARED_DATA"
ENV_WEIGHTS_DIR = "STFEAT_WEIGHTS_DIR"
ENV_CACHE_DIR = "STFEAT_CACHE_DIR"

# Feature cache schema
CACHE_SCHEMA_VERSION = 1
