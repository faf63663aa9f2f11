"""File-name codes of the BU-3DFE and BU-4DFE releases: read by :mod:`.bu3dfe` and :mod:`.bu4dfe`, written by the
synthetic generator (:mod:`.synthetic_faces`)."""

from modeling_facet.prompts import EXPRESSIONS


# BU-3DFE model files (F0001_AN01WH_F3D.wrl): expression code -> class name.
EXPRESSION_CODES = dict(zip(("AN", "DI", "FE", "HA", "SA", "SU", "NE"), EXPRESSIONS))
# BU-3DFE model files: race code -> ethnicity.
RACE_CODES = {
    "WH": "White", "BL": "Black", "AE": "East Asian", "AM": "Middle-East Asian", "IN": "Indian", "LA": "Hispanic/Latino",
}  # fmt: skip
# BU-4DFE sequence folders (F001/Happy/000.wrl): expression code -> folder name.
BU4DFE_FOLDERS = {"AN": "Angry", "DI": "Disgust", "FE": "Fear", "HA": "Happy", "SA": "Sad", "SU": "Surprise"}
# BU-4DFE's landmark release, a folder of the data root mirroring the sequence folders.
BU4DFE_LANDMARK_DIR = "BU4DFE_BND_V1.1"
