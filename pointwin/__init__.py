"""pointwin: window attention on sparse voxels for LiDAR 3D perception."""

__version__ = "0.1.0"

# the one-call inference API, imported on first use (``import pointwin`` stays light for the CLI)
_API = ("load_detector", "load_segmentor", "load_predictor", "DetectionResult", "SegmentationResult", "Predictor")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pointwin' has no attribute {name!r}")


__all__ = ["__version__", *_API]
