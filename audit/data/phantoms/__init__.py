"""Procedural phantom datasets that write the same on-disk layouts as the real data.

VinDr-Mammo is credentialed, so tests and the demo use `write_mammo_phantom` (the VinDr-Mammo layout, real
DICOM files) and `write_brain3d_phantom` (NIfTI volumes + manifest.csv). Both are deterministic in their seed and
build patient identity into the images, so re-identification and replica detection have something to find.
"""

from audit.data.phantoms.brain3d import write_brain3d_phantom
from audit.data.phantoms.common import PhantomSummary
from audit.data.phantoms.mammo import write_mammo_phantom

__all__ = ["PhantomSummary", "write_brain3d_phantom", "write_mammo_phantom"]
